"""Plots of a sweep: loss probability and repair traffic against the repair threshold."""

from __future__ import annotations

import itertools
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tools.simulate.cli import KBITS_PER_TB_PER_UNIT, PACKS_PER_TB

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
MARKS = {(3, 5, 4): "3-of-5, repair < 4\n(pluto's first rule)",
         (3, 5, 5): "3-of-5, repair < 5\n(repair_margin 2)"}


def _by_code(results: list[dict]) -> dict[tuple[int, int], list[dict]]:
    out: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        out.setdefault((r["k"], r["n"]), []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r["threshold"])
    return out


def _subtitle(results: list[dict]) -> str:
    p = results[0]["params"]
    r = results[0]
    return (f"{p['peers']:,} peers online {r['peer_availability']:.0%} of the time, "
            f"{p['departures_per_year']:.0%}/yr departures + {p['disk_failures_per_year']:.0%}/yr disk failures,\n"
            f"grace {p['grace_hours']:g} h, audits every {p['audit_hours']:g} h, "
            f"{'repair by the owner while online' if p['owner_gated'] else 'repair at any time'}; "
            f"{max(x['packs'] for x in results):,} packs per point, one simulated year")


def _mark(ax, x, y, text, color="black"):
    ax.annotate(text, (x, y), xytext=(12, 14), textcoords="offset points", fontsize=9, color=color,
                arrowprops=dict(arrowstyle="->", color=color, lw=0.8))


def plot_loss(results: list[dict], path: str, recommend: list[tuple[int, int, int]] | None = None) -> str:
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=120)
    for i, ((k, n), rs) in enumerate(sorted(_by_code(results).items())):
        c = COLORS[i % len(COLORS)]
        rep = [r for r in rs if r["threshold"]]
        xs = [r["threshold"] - k for r in rep]
        ys = [r["p_loss"] if r["losses"] else r["p_loss_hi"] for r in rep]
        for (x0, y0, r0), (x1, y1, r1) in itertools.pairwise(zip(xs, ys, rep, strict=True)):
            ax.plot([x0, x1], [y0, y1], "-" if r0["losses"] and r1["losses"] else "--", color=c, lw=1.4)
        ax.plot([], [], "-", color=c, lw=1.4, label=f"{k}-of-{n}  (n/k = {n / k:.2f})")
        meas = [r for r in rep if r["losses"]]
        if meas:
            ax.errorbar([r["threshold"] - k for r in meas], [r["p_loss"] for r in meas],
                        yerr=[[r["p_loss"] - r["p_loss_lo"] for r in meas],
                              [r["p_loss_hi"] - r["p_loss"] for r in meas]],
                        fmt="o", color=c, ms=6, capsize=3)
        zero = [r for r in rep if not r["losses"]]
        if zero:
            ax.plot([r["threshold"] - k for r in zero], [r["p_loss_hi"] for r in zero], "v", color=c, ms=8,
                    mfc="white", mew=1.5)
        for r in rs:
            if not r["threshold"]:
                ax.axhline(r["p_loss"], color=c, ls=":", lw=1.2)
        for r in rep:
            key = (r["k"], r["n"], r["threshold"])
            y = r["p_loss"] if r["losses"] else r["p_loss_hi"]
            if key in MARKS:
                _mark(ax, r["threshold"] - k, y, MARKS[key], c)
            if recommend and key in recommend:
                ax.plot([r["threshold"] - k], [y], "*", color="gold", ms=18, mec="black", zorder=5)
    ax.plot([], [], ":", color="gray", lw=1.2, label="dotted: the same code without repair")
    ax.plot([], [], "v", color="gray", mfc="white", mew=1.5, label="no loss seen: 95 % upper bound")
    ax.plot([], [], "o", color="gray", label="losses seen: estimate, 95 % CI")
    if recommend:
        ax.plot([], [], "*", color="gold", ms=14, mec="black", label="recommended defaults")
    ax.set_yscale("log")
    ax.set_xlim(0.4, None)
    ax.set_xlabel("repair margin x  (repair when fewer than k + x fragments are healthy)")
    ax.set_ylabel("probability that a pack is lost within a year")
    sec = ax.secondary_yaxis("right", functions=(lambda p: p * PACKS_PER_TB, lambda v: v / PACKS_PER_TB))
    sec.set_ylabel("packs (8 MiB) lost per TB stored per year")
    ax.set_title("Pack loss in a year vs repair threshold\n" + _subtitle(results), fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_repair(results: list[dict], path: str, recommend: list[tuple[int, int, int]] | None = None) -> str:
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=120)
    for i, ((k, n), rs) in enumerate(sorted(_by_code(results).items())):
        c = COLORS[i % len(COLORS)]
        rep = [r for r in rs if r["threshold"]]
        xs = [r["threshold"] - k for r in rep]
        ax.plot(xs, [r["repair_per_byte_year"] for r in rep], "o-", color=c, lw=1.4, ms=6,
                label=f"{k}-of-{n}  (n/k = {n / k:.2f})")
        for r in rep:
            key = (r["k"], r["n"], r["threshold"])
            if key in MARKS:
                _mark(ax, r["threshold"] - k, r["repair_per_byte_year"], MARKS[key].split("\n")[1][1:-1], c)
            if recommend and key in recommend:
                ax.plot([r["threshold"] - k], [r["repair_per_byte_year"]], "*", color="gold", ms=18, mec="black",
                        zorder=5)
    if recommend:
        ax.plot([], [], "*", color="gold", ms=14, mec="black", label="recommended defaults")
    ax.set_yscale("log")
    ax.set_xlabel("repair margin x  (repair when fewer than k + x fragments are healthy)")
    ax.set_ylabel("repair traffic per year / data stored\n(k downloads + rebuilt uploads)")
    sec = ax.secondary_yaxis("right", functions=(lambda u: u * KBITS_PER_TB_PER_UNIT,
                                                 lambda v: v / KBITS_PER_TB_PER_UNIT))
    sec.set_ylabel("average kbit/s for 1 TB stored")
    ax.set_title("Repair traffic vs repair threshold\n" + _subtitle(results), fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_tradeoff(results: list[dict], path: str, recommend: list[tuple[int, int, int]] | None = None) -> str:
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=120)
    for i, ((k, n), rs) in enumerate(sorted(_by_code(results).items())):
        c = COLORS[i % len(COLORS)]
        rep = [r for r in rs if r["threshold"]]
        xs = [r["repair_per_byte_year"] for r in rep]
        ys = [r["p_loss"] if r["losses"] else r["p_loss_hi"] for r in rep]
        ax.plot(xs, ys, "-", color=c, lw=1, alpha=0.6)
        first_bound = True
        for r, x, y in zip(rep, xs, ys, strict=True):
            ax.plot([x], [y], "o" if r["losses"] else "v", color=c, mfc=c if r["losses"] else "white", mew=1.5, ms=7)
            if r["losses"] or first_bound:  # the bounds of eager thresholds overlap: label the first only
                ax.annotate(f"<{r['threshold']}", (x, y), xytext=(5, 4 if r["losses"] else -12),
                            textcoords="offset points", fontsize=8, color=c)
            first_bound = first_bound and bool(r["losses"])
            if recommend and (r["k"], r["n"], r["threshold"]) in recommend:
                ax.plot([x], [y], "*", color="gold", ms=18, mec="black", zorder=5)
        ax.plot([], [], "o-", color=c, label=f"{k}-of-{n}  (n/k = {n / k:.2f})")
    ax.plot([], [], "v", color="gray", mfc="white", mew=1.5, label="no loss seen: 95 % upper bound")
    if recommend:
        ax.plot([], [], "*", color="gold", ms=14, mec="black",
                label="recommended: " + ", ".join(f"{k}-of-{n} <{t}" for k, n, t in recommend))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("repair traffic per year / data stored")
    ax.set_ylabel("probability that a pack is lost within a year")
    ax.set_title("Durability against repair traffic (labels: repair when healthy < T)\n" + _subtitle(results),
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(results: list[dict], outdir: str, recommend: list[tuple[int, int, int]] | None = None) -> list[str]:
    os.makedirs(outdir, exist_ok=True)
    return [plot_loss(results, os.path.join(outdir, "simulation-loss.png"), recommend),
            plot_repair(results, os.path.join(outdir, "simulation-repair.png"), recommend),
            plot_tradeoff(results, os.path.join(outdir, "simulation-tradeoff.png"), recommend)]
