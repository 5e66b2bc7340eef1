#!/usr/bin/env bash
# Every run behind docs/SIMULATION.md, in order: about 1.5 hours on 2 idle cores.
# Results are deterministic: the same seed gives the same numbers.
# Usage: bash tools/simulate/experiments.sh [OUTDIR]   (JSON and tables go to OUTDIR, default /tmp/pluto-sim)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/work/venv/bin/python}
OUT=${1:-/tmp/pluto-sim}
mkdir -p "$OUT"
sim() { name=$1; shift; echo "== $name: $*" >&2; $PY -m tools.simulate --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"; }

# 1. the sweep (3-of-5, 4-of-8, 10-of-16: every threshold, 1,000,000 packs), then 8-of-16; the plots
sim baseline
sim sweep-8-16 --codes 8-16
$PY -m tools.simulate --from-json "$OUT/baseline.json" "$OUT/sweep-8-16.json" --plots docs --recommend 8-16@12,4-8@6 > /dev/null

# 2. the same network with other seeds: between-network spread, pooled estimates
sim seeds        --codes 3-5@4,4-8@6/7,10-16@13/14 --vary seed=2,3,4,5
sim fin-seeds168 --codes 4-8@7,10-16@14 --grace-hours 168 --vary seed=1,2,3,4,5
sim wide-seeds   --codes 8-16@11/12,6-12@9 --vary seed=1,2,3

# 3. one parameter at a time, 500,000 packs
C=3-5@4,4-8@6,4-8@7,10-16@13,10-16@14
sim grace   --packs 500000 --codes $C --vary grace_hours=24,48,120,168,336
sim audit   --packs 500000 --codes $C --vary audit_hours=1,24
sim owner   --packs 500000 --codes $C --owner-gated false
sim dep     --packs 500000 --codes $C --vary departures_per_year=0.1,0.5,1.0
sim abs     --packs 500000 --codes $C --vary absences_per_year=0,12
sim avail   --packs 500000 --codes $C --vary on_hours=8,40
sim mass    --packs 500000 --codes $C --mass-failure-day 180 --mass-failure-fraction 0.05
sim online  --packs 50000  --codes 3-5@4/5,4-8@6,10-16@13 --healthy online
sim today-dep  --packs 500000 --codes 3-5@5 --vary departures_per_year=0.5
sim today-mass --packs 500000 --codes 3-5@5 --mass-failure-day 180 --mass-failure-fraction 0.05

# 4. the finalists under stress: a 7-day grace period; wider codes at n/k = 2
F="--codes 4-8@7,10-16@14 --grace-hours 168"
sim fin-dep168   --packs 500000 $F --vary departures_per_year=0.1,0.5,1.0
sim fin-mass168  --packs 500000 $F --mass-failure-day 180 --mass-failure-fraction 0.05
sim fin-abs168   --packs 500000 $F --vary absences_per_year=0,12
sim fin-audit168 --packs 500000 $F --vary audit_hours=1,24
sim extra        --packs 500000 --codes 8-16@11/12/13,6-12@8/9/10,5-8@6/7
W="--codes 8-16@11/12,6-12@9"
sim wide-dep     --packs 500000 $W --vary departures_per_year=0.5,1.0
sim wide-mass    --packs 500000 $W --mass-failure-day 180 --mass-failure-fraction 0.05
R="--codes 8-16@12"
sim wide-grace   --packs 500000 $R --vary grace_hours=24,168
sim wide-audit   --packs 500000 $R --vary audit_hours=1,24
sim wide-owner   --packs 500000 $R --owner-gated false
sim wide-abs     --packs 500000 $R --vary absences_per_year=0,12
sim wide-avail   --packs 500000 $R --vary on_hours=8,40
