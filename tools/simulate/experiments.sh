#!/usr/bin/env bash
# Every run behind docs/SIMULATION.md, in order. About an hour on 2 idle cores.
# Results are deterministic: the same seed gives the same numbers.
# Usage: bash tools/simulate/experiments.sh [OUTDIR]   (JSON and tables go to OUTDIR, default /tmp/pluto-sim)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/work/venv/bin/python}
OUT=${1:-/tmp/pluto-sim}
mkdir -p "$OUT"
sim() { name=$1; shift; echo "== $name: $*" >&2; $PY -m tools.simulate --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"; }

# 1. the sweep: every threshold of 3-of-5, 4-of-8, 10-of-16, 1,000,000 packs; plots for the docs
sim baseline --plots docs --recommend 4-8@6

# 2. the same network with other seeds (between-network spread, pooled estimates)
sim seeds --codes 3-5@4,4-8@6/7,10-16@13/14 --vary seed=2,3,4,5

# 3. one parameter at a time, 500,000 packs
C=3-5@4,4-8@6,4-8@7,10-16@13,10-16@14
sim grace   --packs 500000 --codes $C --vary grace_hours=24,48,120,168,336
sim audit   --packs 500000 --codes $C --vary audit_hours=1,24
sim owner   --packs 500000 --codes $C --owner-gated false
sim dep     --packs 500000 --codes $C --vary departures_per_year=0.1,0.5,1.0
sim abs     --packs 500000 --codes $C --vary absences_per_year=0,12
sim avail   --packs 500000 --codes $C --vary on_hours=8,40
sim mass    --packs 500000 --codes $C --mass-failures-per-year 1 --mass-failure-fraction 0.05
sim online  --packs 50000  --codes 3-5@4,4-8@6,10-16@13 --healthy online

# 4. wider codes at the same expansions, for comparison
sim extra   --packs 500000 --codes 8-16@11/12/13,6-12@8/9/10,5-8@6/7
