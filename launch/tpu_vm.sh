#!/usr/bin/env bash
# Runs a sweep on every worker of a Cloud TPU VM (one host or a pod slice), detached from
# this machine: a dropped connection or a closed laptop stops nothing.
#
#   launch/tpu_vm.sh [OPTIONS] TPU_NAME ZONE SWEEP_FILE ROOT [--only=NAMES] [--config.<field>=<value> ...]
#   launch/tpu_vm.sh my-v4-16 us-central2-b configs/sweeps/paper_vgg.py /mnt/shared/paper_vgg
#
# Options: --detach (start, then return at once), --stop (stop the runs: each
# checkpoints), --poll=SECONDS (how often to look at the workers, default 60),
# --shared-data-dir / --per-worker-data-dir (is TFDS_DATA_DIR one directory every worker
# sees? default: shared when TFDS_DATA_DIR is set), --dry-run (print the gcloud commands).
#
# First it asks every worker over ssh what runs there. If the sweep's driver already runs
# under ROOT it attaches (starts nothing). Otherwise: set-up on every worker (clone or pull
# the repository, BNJAX_REPO, default this checkout's origin; install bnjax with jax[tpu]
# and the prepare extra), then on every worker a driver started with nohup and setsid,
# launch/tpu_worker.sh: it prepares the sweep's tfds datasets (with a shared data dir
# worker 0 alone, the others wait for it), then runs the unfinished runs one after another,
# `python -m bnjax.main --multihost` on every worker at once (on Cloud TPU,
# jax.distributed.initialize() needs no arguments); runs done or diverged are skipped.
# Then it follows them, polling over ssh, and exits 0 when every run is done or diverged,
# 1 otherwise. Ctrl-C, a dropped connection or a closed laptop only stop the following:
# rerun the same command to follow again, or to resume what stopped.
# Logs: ROOT/<run>/logs/worker<k>.log, ROOT/.tpu_vm/worker<k>.log (the drivers). ROOT must
# be a directory every worker can reach (a shared disk). Needs bnjax installed here too
# (the run names come from `python -m bnjax.sweep SWEEP_FILE --list`) and gcloud.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 2; }  # the comment above

parse_args() {
  dry_run=0 detach=0 stop=0 poll=60 data_dir=""
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) dry_run=1 ;;
      --detach) detach=1 ;;
      --stop) stop=1 ;;
      --poll=*) poll=${1#*=} ;;
      --shared-data-dir) data_dir=shared ;;
      --per-worker-data-dir) data_dir=per-worker ;;
      --*) echo "tpu_vm.sh: unknown option $1" >&2; usage ;;
      *) break ;;
    esac
    shift
  done
  if [ $# -lt 4 ]; then usage; fi
  tpu=$1 zone=$2 sweep=$3 root=$4; shift 4
  only=() extra=()
  for arg in "$@"; do
    case $arg in
      --only=*) only=("$arg") ;;
      *) extra+=("$arg") ;;
    esac
  done
  if [ -z "$data_dir" ]; then
    data_dir=$([ -n "${TFDS_DATA_DIR:-}" ] && echo shared || echo per-worker)
  fi
  if [ "$data_dir" = shared ] && [ -z "${TFDS_DATA_DIR:-}" ]; then
    echo "tpu_vm.sh: --shared-data-dir needs TFDS_DATA_DIR, a directory every worker sees" >&2
    exit 2
  fi
}

check_local_install() {
  # The run names come from bnjax here: without it, one line saying what to install
  # (not a traceback ending in "No module named 'ml_collections'").
  local err
  if ! err=$("$python" -c 'import bnjax.sweep, bnjax.config_lib' 2>&1); then
    echo "tpu_vm.sh: needs bnjax on this machine to list the sweep's runs, and $python cannot" \
      "import it ($(tail -n 1 <<<"$err")); install it: cd $(dirname "$here") &&" \
      "python3 -m venv .venv && . .venv/bin/activate && pip install -e ." >&2
    exit 2
  fi
  if [ "$dry_run" = 0 ] && ! command -v gcloud >/dev/null; then
    echo "tpu_vm.sh: gcloud not found; install the Google Cloud CLI" \
      "(https://cloud.google.com/sdk/docs/install) and run gcloud auth login" >&2
    exit 2
  fi
}

gcloud_all() {  # gcloud ssh on every worker; printed instead under --dry-run
  local cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1")
  if [ "$dry_run" = 0 ]; then "${cmd[@]}"; return; fi
  printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; echo
}

# ----------------------------------------------------------- commands for the workers
worker_commands() {
  local env_prefix="" q_extra="" arg repo common
  if [ -n "${TFDS_DATA_DIR:-}" ]; then
    env_prefix="export TFDS_DATA_DIR=$(printf '%q' "$TFDS_DATA_DIR") && "
  fi
  for arg in "${extra[@]}"; do q_extra+=" $(printf '%q' "$arg")"; done
  local runs=${names//$'\n'/,} dss=${datasets//$'\n'/,}
  common=" --root=$(printf '%q' "$root")"
  # a worker without the clone (or the script) has run nothing: it says 'none'
  status_cmd="cd bnjax 2>/dev/null && test -x launch/tpu_worker.sh"
  status_cmd+=" && launch/tpu_worker.sh status$common --runs=$runs || echo tpu_worker - none"
  stop_cmd="cd bnjax && launch/tpu_worker.sh stop$common"
  start_cmd="${env_prefix}cd bnjax && . .venv/bin/activate && launch/tpu_worker.sh start$common"
  start_cmd+=" --sweep=$(printf '%q' "$sweep") --launch=$launch --runs=$runs"
  if [ -n "$dss" ]; then start_cmd+=" --datasets=$dss --data-dir=$data_dir"; fi
  if [ -n "$q_extra" ]; then start_cmd+=" --$q_extra"; fi
  repo=${BNJAX_REPO:-$(git -C "$here/.." remote get-url origin 2>/dev/null || true)}
  setup_cmd="${env_prefix}(test -d bnjax || git clone -q $(printf '%q' "$repo") bnjax)"
  setup_cmd+=" && cd bnjax && git pull -q"
  setup_cmd+=" && (test -d .venv || python3 -m venv .venv) && . .venv/bin/activate"
  setup_cmd+=" && pip install -q -e '.[prepare]' 'jax[tpu]'"
  if [ -z "$repo" ]; then setup_cmd=""; fi
}

# -------------------------------------------------------------- what the workers say
ask_workers() {  # runs the status command on every worker; sets the arrays below
  local err out rc=0 tag k state rest
  err=$(mktemp)
  out=$(gcloud_all "$status_cmd" 2>"$err") || rc=$?
  contact_error=$(tail -n 1 "$err"); rm -f "$err"
  worker_states=() run_lines=() running=0 launch_seen=""
  while read -r tag k state rest; do
    case $tag in
      tpu_worker)
        worker_states+=("$k $state $rest")
        if [ "$state" = running ]; then
          running=$((running + 1)); launch_seen=$(sed -n 's/.*launch=\([^ ]*\).*/\1/p' <<<"$rest")
        fi ;;
      tpu_run) run_lines+=("$k $state $rest") ;;  # name state step
    esac
  done <<<"$out"
  return "$rc"
}

all_finished() {  # every run of the sweep done or diverged (needs worker 0's run lines)
  local line name state step
  [ "${#run_lines[@]}" -gt 0 ] || return 1
  for line in "${run_lines[@]}"; do
    read -r name state step <<<"$line"
    case $state in done|diverged) ;; *) return 1 ;; esac
  done
}

progress() {  # one line: runs finished, the others' states and steps, workers not running
  local line name state step n_done=0 now="" others="" w k s
  for line in "${run_lines[@]}"; do
    read -r name state step <<<"$line"
    case $state in
      done|diverged) n_done=$((n_done + 1)) ;;
      pending) ;;
      *) now+="; $name $state at step $step" ;;
    esac
  done
  for w in "${worker_states[@]}"; do
    read -r k s _ <<<"$w"
    if [ "$s" != running ]; then others+=" $k ($s)"; fi
  done
  echo "$n_done of ${#run_lines[@]} runs finished$now${others:+; workers not running:$others}"
}

report() {  # the runs' table; 0 when every run is done or diverged
  local line name state step w k s rest
  echo "[tpu_vm] runs under $root:" >&2
  for line in "${run_lines[@]}"; do
    read -r name state step <<<"$line"
    if [ "$state" = running ] && [ "$running" = 0 ]; then state="stopped"; fi
    printf '  %-30s %-12s step %s\n' "$name" "$state" "$step" >&2
  done
  for w in "${worker_states[@]}"; do
    read -r k s rest <<<"$w"
    case $s in
      exited) [[ $rest == *code=0* ]] || echo "[tpu_vm] worker $k: the driver ended with status" \
        "${rest##*code=}; its log: $root/.tpu_vm/worker$k.log" >&2 ;;
      lost) echo "[tpu_vm] worker $k: the driver died without finishing (killed, or the VM" \
        "restarted); rerun this command to resume" >&2 ;;
    esac
  done
  echo "[tpu_vm] logs on the workers: $root/<run>/logs/worker<k>.log," \
    "$root/.tpu_vm/worker<k>.log" >&2
  all_finished
}

follow() {
  # Polls until no driver runs. A failed poll (no network, a laptop that slept) is
  # retried: the runs do not depend on this process. After max_failures in a row it gives
  # up, saying how to attach again.
  local failures=0 max_failures=10 last="" line
  while :; do
    if ask_workers; then
      failures=0
      line=$(progress)
      if [ "$line" != "$last" ]; then echo "[tpu_vm] $(date +%T) $line" >&2; last=$line; fi
      if [ "$running" = 0 ]; then break; fi
    else
      failures=$((failures + 1))
      echo "[tpu_vm] no answer from the workers ($contact_error); the runs go on; try" \
        "$failures of $max_failures" >&2
      if [ "$failures" -ge "$max_failures" ]; then
        echo "[tpu_vm] stopped following; the runs go on on the workers; rerun this command" \
          "to follow them again" >&2
        exit 255
      fi
    fi
    sleep "$poll"
  done
  report
}

on_signal() {  # Ctrl-C or SIGHUP while following: the runs go on
  echo "[tpu_vm] stopped following; the runs go on on the workers. Rerun this command to" \
    "follow them again; add --stop to stop them (each checkpoints)" >&2
  exit "$1"
}

start() {  # set-up, then a driver on every worker
  if [ -z "$setup_cmd" ]; then
    echo "tpu_vm.sh: set BNJAX_REPO to a git URL the workers can clone" >&2; exit 2
  fi
  echo "[tpu_vm] set-up on every worker (clone or pull, install)" >&2
  gcloud_all "$setup_cmd"
  echo "[tpu_vm] starting the drivers (launch $launch)" >&2
  if ! gcloud_all "$start_cmd" && [ "$dry_run" = 0 ]; then
    # Started on some workers only? The others would wait for them: stop every one.
    if ask_workers && [ "$running" -gt 0 ] && [ "$running" = "${#worker_states[@]}" ] \
        && [ "$launch_seen" = "$launch" ]; then
      return 0  # every worker started; only the connection failed afterwards
    fi
    echo "[tpu_vm] could not start on every worker; stopping those that started" >&2
    gcloud_all "$stop_cmd" || true
    exit 1
  fi
}

main() {
  parse_args "$@"
  python=${PYTHON:-python3}
  check_local_install
  local sweep_args=("$sweep" --root="$root" "${only[@]}" "${extra[@]}")
  names=$("$python" -m bnjax.sweep "${sweep_args[@]}" --list)
  datasets=$("$python" -m bnjax.sweep "${sweep_args[@]}" --tfds-datasets)
  launch=$(date -u +%Y%m%dT%H%M%SZ)-$RANDOM
  worker_commands
  if [ "$dry_run" = 1 ]; then
    gcloud_all "$status_cmd"
    if [ "$stop" = 1 ]; then gcloud_all "$stop_cmd"; exit 0; fi
    start
    exit 0
  fi
  trap 'on_signal 130' INT
  trap 'on_signal 129' HUP
  trap 'on_signal 143' TERM
  if [ "$stop" = 1 ]; then
    gcloud_all "$stop_cmd"
    follow || true
    exit 0
  fi
  if ! ask_workers; then
    echo "tpu_vm.sh: cannot reach every worker of $tpu ($contact_error)" >&2; exit 255
  fi
  local w
  for w in "${worker_states[@]}"; do
    if [[ $w == *" busy "* ]]; then
      echo "tpu_vm.sh: worker ${w%% *} runs another sweep (${w##* }); stop it first" >&2; exit 1
    fi
  done
  if [ "$running" -gt 0 ]; then
    echo "[tpu_vm] the sweep already runs on $running worker(s) (launch $launch_seen):" \
      "attaching, nothing started" >&2
  elif all_finished; then
    echo "[tpu_vm] every run is finished already" >&2
    report
    exit
  else
    start
  fi
  if [ "$detach" = 1 ]; then
    echo "[tpu_vm] detached: the runs go on on the workers; rerun this command (without" \
      "--detach) to follow them, with --stop to stop them" >&2
    exit 0
  fi
  follow
}

main "$@"
