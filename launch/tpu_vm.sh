#!/usr/bin/env bash
# Runs every run of a sweep on every worker of a Cloud TPU VM (one host or a pod slice).
#
#   launch/tpu_vm.sh [--dry-run] TPU_NAME ZONE SWEEP_FILE ROOT [--only=NAMES] [--config.<field>=<value> ...]
#   launch/tpu_vm.sh my-v4-16 us-central2-b configs/sweeps/paper_vgg.py /mnt/shared/paper_vgg
#
# Set-up, once per worker: clone (or pull) the repository, install bnjax with jax[tpu]
# and the prepare extra, and prepare every tfds dataset of the sweep (ArrayRecord, into
# $TFDS_DATA_DIR when it is set, e.g. a bucket or disk every worker shares). Then, one run
# after another, every worker runs the same `python -m bnjax.main --multihost` (on Cloud
# TPU, jax.distributed.initialize() needs no arguments); each reads its slice of the
# global batch, host 0 writes metrics. ROOT must be a directory every worker can reach
# (a shared disk); runs finished there are skipped by bnjax.main itself on a rerun.
# --dry-run prints the gcloud commands instead of running them. Needs bnjax installed
# here too (the run names come from `python -m bnjax.sweep SWEEP_FILE --list`).
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 4 ]; then sed -n '2,17p' "$0"; exit 2; fi
tpu=$1 zone=$2 sweep=$3 root=$4; shift 4
only=() extra=()
for arg in "$@"; do
  case $arg in
    --only=*) only=("$arg") ;;
    *) extra+=("$arg") ;;
  esac
done
repo=${BNJAX_REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)}
if [ -z "$repo" ]; then echo "tpu_vm.sh: set BNJAX_REPO to a git URL the workers can clone" >&2; exit 2; fi
python=${PYTHON:-python3}
names=$("$python" -m bnjax.sweep "$sweep" --root="$root" --list "${only[@]}" "${extra[@]}")
datasets=$("$python" -m bnjax.sweep "$sweep" --root="$root" --tfds-datasets "${only[@]}" "${extra[@]}")

env_prefix=""
if [ -n "${TFDS_DATA_DIR:-}" ]; then env_prefix="export TFDS_DATA_DIR=$(printf '%q' "$TFDS_DATA_DIR") && "; fi
setup="${env_prefix}(test -d bnjax || git clone -q $(printf '%q' "$repo") bnjax) && cd bnjax && git pull -q"
setup+=" && (test -d .venv || python3 -m venv .venv) && . .venv/bin/activate"
setup+=" && pip install -q -e '.[prepare]' 'jax[tpu]'"
for ds in $datasets; do
  setup+=" && python -m bnjax.data prepare $(printf '%q' "$ds")"
done

gcloud_all() {  # gcloud ssh on every worker; printed instead under --dry-run
  local cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1")
  if [ "$dry_run" = 1 ]; then printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; echo; else "${cmd[@]}"; fi
}

gcloud_all "$setup"
status=0
for name in $names; do
  run="${env_prefix}cd bnjax && . .venv/bin/activate && python -m bnjax.main --multihost"
  run+=" --config=$(printf '%q' "$sweep:$name") --workdir=$(printf '%q' "$root/$name")"
  for arg in "${extra[@]}"; do run+=" $(printf '%q' "$arg")"; done
  echo "[tpu_vm] run $name" >&2
  gcloud_all "$run" || { status=$?; echo "[tpu_vm] run $name failed (exit $status)" >&2; }
done
exit $status
