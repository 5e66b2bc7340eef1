"""Durability simulator for pluto's erasure coding and repair.

A discrete-event simulation (no sockets) of a network of storage peers with
churn over a simulated year: how likely a pack is to be lost, and how much
repair traffic it costs, for each k-of-n and repair threshold.

Run it from the repository root: `python -m tools.simulate --help`.
The model, its parameters and the results are in docs/SIMULATION.md.
"""

from tools.simulate.model import Code, Params, Timeline, simulate, timeline_for, wilson

__all__ = ["Code", "Params", "Timeline", "simulate", "timeline_for", "wilson"]
