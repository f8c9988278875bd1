#!/usr/bin/env bash
# Simulates N hosts on this machine: N processes, each with D fake CPU devices, joined by
# jax.distributed.initialize on localhost. Same command-line tail as bnjax.main.
#
#   launch/local_multihost.sh N D --config=configs/dln_bn.py:local --workdir=/tmp/mh
#
# Environment: PYTHON (default python), BNJAX_PORT (default random) for the coordinator.
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,8p' "$0"; exit 2; fi
n=$1 d=$2; shift 2
port=${BNJAX_PORT:-$((20000 + RANDOM % 10000))}
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$d" JAX_PLATFORMS=cpu \
    "${PYTHON:-python}" -m bnjax.main --multihost --coordinator_address="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
