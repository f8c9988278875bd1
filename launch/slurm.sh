#!/usr/bin/env bash
# Runs every run of a sweep on a SLURM GPU cluster: one srun per run over all nodes.
#
#   launch/slurm.sh [--dry-run] SWEEP_FILE ROOT [--only=NAMES] [--config.<field>=<value> ...]
#
# Run it inside an allocation (sbatch or salloc) of N nodes with one task per node, e.g.
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --wrap "launch/slurm.sh configs/sweeps/paper_vgg.py /shared/runs/paper_vgg"
# Every task runs `python -m bnjax.main --multihost`; jax.distributed.initialize() reads
# the coordinator, process count and index from SLURM's environment. ROOT and the tfds
# data ($TFDS_DATA_DIR, prepared once beforehand: `python -m bnjax.data prepare cifar10`)
# must be on a filesystem every node sees. Runs whose status.json says done or diverged
# are skipped; the others start or resume. --dry-run prints the srun commands (with
# SLURM_NNODES, default 2 outside an allocation) instead of running them.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 2 ]; then sed -n '2,15p' "$0"; exit 2; fi
sweep=$1 root=$2; shift 2
only=() extra=()
for arg in "$@"; do
  case $arg in
    --only=*) only=("$arg") ;;
    *) extra+=("$arg") ;;
  esac
done
python=${PYTHON:-python3}
nodes=${SLURM_NNODES:-2}
names=$("$python" -m bnjax.sweep "$sweep" --root="$root" --list "${only[@]}" "${extra[@]}")
status=0
for name in $names; do
  state=$(sed -n 's/.*"state": "\([a-z]*\)".*/\1/p' "$root/$name/status.json" 2>/dev/null || true)
  if [ "$state" = "done" ] || [ "$state" = "diverged" ]; then
    echo "[slurm] $name: $state already, skipped" >&2
    continue
  fi
  cmd=(srun --nodes="$nodes" --ntasks-per-node=1 "$python" -m bnjax.main --multihost
       --config="$sweep:$name" --workdir="$root/$name" "${extra[@]}")
  if [ "$dry_run" = 1 ]; then printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; echo; continue; fi
  echo "[slurm] run $name" >&2
  "${cmd[@]}" || { status=$?; echo "[slurm] run $name failed (exit $status)" >&2; }
done
exit $status
