#!/usr/bin/env bash
# Runs one experiment on every worker of a Cloud TPU VM (single host or a pod slice).
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.<field>=<value> ...]
#   launch/tpu_vm.sh my-v4-32 us-central2-b configs/vgg_noisy.py gs://bucket/runs/vgg_noisy
#
# Every worker runs the same command with --multihost (jax.distributed.initialize() needs
# no arguments on Cloud TPU); each reads its own slice of the global batch; host 0 writes
# metrics. WORKDIR must be reachable from every worker (a gs:// bucket or shared disk).
# Rerun the same command after a preemption: the run resumes from its last checkpoint.
set -euo pipefail
if [ $# -lt 4 ]; then sed -n '2,11p' "$0"; exit 2; fi
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
repo=${BNJAX_REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo "")}
if [ -z "$repo" ]; then echo "set BNJAX_REPO to a git URL the workers can clone" >&2; exit 2; fi
setup="test -d bnjax || git clone -q $repo bnjax; cd bnjax && git pull -q && \
  (test -d .venv || python3 -m venv .venv) && . .venv/bin/activate && \
  pip install -q -e . 'jax[tpu]'"
run="python -m bnjax.main --multihost --config=$config --workdir=$workdir $*"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$setup && $run"
