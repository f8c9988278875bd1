#!/usr/bin/env bash
# The worker side of launch/tpu_vm.sh: runs on every TPU VM worker, in the bnjax clone
# with its venv active. Each worker runs a detached driver that prepares the tfds data
# and then runs the sweep's runs one after another, each as `python -m bnjax.main
# --multihost` (every worker runs the same run at the same time; JAX joins them).
#
#   launch/tpu_worker.sh start  --root=ROOT --sweep=FILE --runs=A,B,... --launch=ID
#                               [--datasets=D,...] [--data-dir=shared|per-worker] [-- FLAGS...]
#   launch/tpu_worker.sh status --root=ROOT [--runs=A,B,...]
#   launch/tpu_worker.sh stop   --root=ROOT
#   launch/tpu_worker.sh plan   --root=ROOT --sweep=FILE --runs=A,B,... [-- FLAGS...]
#
# start returns at once: the driver runs under nohup and setsid (no terminal, its own
# session), so a dropped ssh connection (sshd's SIGHUP to the session) stops nothing. It
# refuses to start a second driver on a worker while one runs (a lock in $HOME: a TPU is
# used by one process at a time). status prints one line for this worker,
# `tpu_worker K STATE launch=ID run=NAME code=C` (STATE: running, exited, lost: the driver
# died without saying so, none: never started here, busy: running another ROOT) and, on
# worker 0, `tpu_run NAME STATE STEP` per run. stop sends SIGTERM to the driver, which
# passes it to the run (it checkpoints and says `preempted`). plan prints the bnjax.main
# commands start would run (unfinished runs only).
#
# Files (ROOT is on a disk every worker shares):
#   ROOT/.tpu_vm/worker<k>.{pid,log,exit}  the driver: pid and host, its log, its exit status
#   ROOT/.tpu_vm/prepared                  worker 0's dataset preparation (shared data dir)
#   ROOT/<run>/logs/worker<k>.{log,pid,exit}  each run on worker k: its output, the pid of
#                                          bnjax.main while it runs, its exit status
# Worker index: $TPU_WORKER_ID, else the TPU VM metadata server (as JAX finds it).
set -euo pipefail

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 2; }  # the comment above

# ------------------------------------------------------------------------ arguments
parse_args() {
  root="" sweep="" runs="" launch="" datasets="" data_dir=per-worker extra=()
  while [ $# -gt 0 ]; do
    case $1 in
      --root=*) root=${1#*=} ;;
      --sweep=*) sweep=${1#*=} ;;
      --runs=*) runs=${1#*=} ;;
      --launch=*) launch=${1#*=} ;;
      --datasets=*) datasets=${1#*=} ;;
      --data-dir=shared|--data-dir=per-worker) data_dir=${1#*=} ;;
      --) shift; extra=("$@"); break ;;
      *) echo "tpu_worker.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
  done
  if [ -z "$root" ]; then echo "tpu_worker.sh: --root is required" >&2; usage; fi
  state_dir=$root/.tpu_vm
}

worker_index() {
  if [ -n "${TPU_WORKER_ID:-}" ]; then echo "$TPU_WORKER_ID"; return; fi
  curl -sf --max-time 10 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    || { echo "tpu_worker.sh: cannot tell this worker's index (no TPU_WORKER_ID," \
           "no metadata server)" >&2; exit 2; }
}

# ------------------------------------------------------------------ what a workdir says
run_state() {  # state in DIR/status.json (written by host 0), or 'pending'
  local s
  s=$(sed -n 's/.*"state": *"\([a-z_]*\)".*/\1/p' "$1/status.json" 2>/dev/null || true)
  echo "${s:-pending}"
}

run_step() {  # the step of the last whole line of DIR/metrics.jsonl, or of status.json
  local s
  s=$(tail -n 2 "$1/metrics.jsonl" 2>/dev/null \
      | sed -n 's/^{"step": *\([0-9]*\),.*}$/\1/p' | tail -n 1)
  [ -n "$s" ] || s=$(sed -n 's/.*"step": *\([0-9]*\).*/\1/p' "$1/status.json" 2>/dev/null || true)
  echo "${s:-0}"
}

finished() { case $(run_state "$1") in done|diverged) return 0 ;; *) return 1 ;; esac; }

main_command() {  # the one process that trains (or resumes) run $1 on this worker
  cmd=(python -m bnjax.main --multihost "--config=$sweep:$1" "--workdir=$root/$1" "${extra[@]}")
}

# --------------------------------------------------------------------- the driver's lock
# One driver per machine, whatever its ROOT: flock on a file in $HOME, held by the driver
# (and inherited by its run) for its whole life, so it is released however it ends, even
# by SIGKILL or a reboot. The file names the ROOT and launch that hold it.
lock_file() { echo "$HOME/.bnjax-tpu-worker.lock"; }

lock_held() { ! flock -n "$(lock_file)" true 2>/dev/null; }

lock_root() { sed -n 1p "$(lock_file)" 2>/dev/null || true; }

lock_launch() { sed -n 2p "$(lock_file)" 2>/dev/null || true; }

# ------------------------------------------------------------------------- commands
cmd_start() {
  parse_args "$@"
  k=$(worker_index)
  if lock_held; then  # a driver already runs here: say which, start nothing
    if [ "$(lock_root)" = "$root" ]; then
      echo "tpu_worker $k running launch=$(lock_launch) (already)"; return 0
    fi
    echo "tpu_worker $k busy root=$(lock_root)"; return 3
  fi
  mkdir -p "$state_dir"
  # nohup: SIGHUP ignored; setsid: a session of its own, out of the ssh session's process
  # group; every descriptor redirected, so ssh does not wait for them to close.
  nohup setsid "$0" _drive "$@" </dev/null >>"$state_dir/worker$k.log" 2>&1 &
  local i words
  for ((i = 0; i < 100; i++)); do  # until the driver has taken the lock (it may be done already)
    if read -r -a words 2>/dev/null <"$state_dir/worker$k.pid" \
        && [ "${words[2]:-}" = "$launch" ]; then
      echo "tpu_worker $k started launch=$launch pid=${words[0]}"; return 0
    fi
    sleep 0.1
  done
  echo "tpu_worker $k failed to start; see $state_dir/worker$k.log"; return 1
}

lock_pid() { sed -n 3p "$(lock_file)" 2>/dev/null || true; }

cmd_drive() {  # the detached driver itself
  parse_args "$@"
  k=$(worker_index)
  exec 9>>"$(lock_file)"
  if ! flock -n 9; then echo "[worker $k] another driver holds $(lock_file)"; exit 3; fi
  printf '%s\n%s\n%s\n' "$root" "$launch" "$$" >"$(lock_file)"  # same inode: still locked
  echo "$$ $(hostname) $launch" >"$state_dir/worker$k.pid"
  rm -f "$state_dir/worker$k.exit" "$state_dir/worker$k.run"
  log "launch $launch: runs $runs on $(hostname), pid $$"
  child="" stopping=0
  trap on_stop TERM INT
  trap '' HUP
  local status=0 prev="" name
  prepare_data || status=1
  if [ "$status" = 0 ]; then
    IFS=, read -r -a names <<<"$runs"
    for name in "${names[@]}"; do
      [ "$stopping" = 0 ] || break
      run_one "$name" || status=1
    done
  fi
  [ "$stopping" = 0 ] || status=143
  log "launch $launch: driver ends, status $status"
  echo "$launch $status" >"$state_dir/worker$k.exit"
  exit "$status"
}

log() { echo "[worker $k $(date -u +%FT%TZ)] $*"; }

on_stop() {  # SIGTERM (tpu_vm.sh --stop): the run checkpoints and stops, no run after it
  stopping=1
  log "stop requested"
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
}

wait_for_worker0() {  # until worker 0 writes FILE in this launch; $written: its status
  # (no command substitution: a subshell would hold off the driver's SIGTERM trap)
  local file=$1 words
  while :; do
    if read -r -a words 2>/dev/null <"$file" && [ "${words[0]:-}" = "$launch" ]; then
      written=${words[1]:-1}; return 0
    fi
    [ "$stopping" = 0 ] || return 1
    if read -r -a words 2>/dev/null <"$state_dir/worker0.exit" \
        && [ "${words[0]:-}" = "$launch" ]; then
      written=1; return 0  # worker 0's driver has ended without writing it
    fi
    sleep 1
  done
}

prepare_data() {
  # A shared data dir is prepared by worker 0 alone (concurrent preparations of one
  # dataset race); the others wait for its marker. A per-worker dir: each its own.
  [ -n "$datasets" ] || return 0
  local ds code=0
  if [ "$data_dir" = shared ] && [ "$k" != 0 ]; then
    log "waiting for worker 0 to prepare $datasets in ${TFDS_DATA_DIR:-the shared data dir}"
    wait_for_worker0 "$state_dir/prepared" || return 1
    log "worker 0 prepared the data (status $written)"
    return "$written"
  fi
  IFS=, read -r -a dss <<<"$datasets"
  for ds in "${dss[@]}"; do
    log "preparing $ds"
    python -m bnjax.data prepare "$ds" </dev/null || { code=$?; log "preparing $ds failed"; break; }
  done
  if [ "$data_dir" = shared ]; then  # written whole, then moved: never read half-written
    echo "$launch $code" >"$state_dir/prepared.tmp"
    mv -f "$state_dir/prepared.tmp" "$state_dir/prepared"
  fi
  return "$code"
}

run_one() {
  local name=$1 wd="$root/$1" code
  if finished "$wd"; then log "$name: $(run_state "$wd") already, skipped"; return 0; fi
  # Process 0 hosts the run's coordinator: the others start the next run only once it has
  # exited, or they could join the previous run's coordinator on the same port.
  if [ "$k" != 0 ] && [ -n "$prev" ]; then
    wait_for_worker0 "$root/$prev/logs/worker0.exit" || return 1
  fi
  mkdir -p "$wd/logs"
  rm -f "$wd/logs/worker$k.exit"
  main_command "$name"
  echo "$name" >"$state_dir/worker$k.run"
  log "$name: start, log in $wd/logs/worker$k.log"
  printf '\n=== %s launch %s worker %s:%s\n' "$(date -u +%FT%TZ)" "$launch" "$k" \
    "$(printf ' %q' "${cmd[@]}")" >>"$wd/logs/worker$k.log"
  "${cmd[@]}" </dev/null >>"$wd/logs/worker$k.log" 2>&1 &
  child=$!
  echo "$child $(hostname)" >"$wd/logs/worker$k.pid"
  # wait returns early when a trapped signal arrives: wait again until the run has ended
  while :; do
    code=0; wait "$child" || code=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=""
  echo "$launch $code" >"$wd/logs/worker$k.exit"
  rm -f "$wd/logs/worker$k.pid"
  prev=$name
  log "$name: exit $code, $(run_state "$wd") at step $(run_step "$wd")"
  [ "$code" = 0 ]
}

cmd_status() {
  parse_args "$@"
  k=$(worker_index)
  local launch_now="" code="" words=() run=""
  if read -r -a words 2>/dev/null <"$state_dir/worker$k.pid"; then launch_now=${words[2]:-}; fi
  run=$(cat "$state_dir/worker$k.run" 2>/dev/null || true)
  if lock_held; then
    if [ "$(lock_root)" = "$root" ]; then
      echo "tpu_worker $k running launch=$(lock_launch) run=$run"
    else
      echo "tpu_worker $k busy root=$(lock_root)"
    fi
  elif [ -z "$launch_now" ]; then
    echo "tpu_worker $k none"
  elif read -r -a words 2>/dev/null <"$state_dir/worker$k.exit" \
      && [ "${words[0]:-}" = "$launch_now" ]; then
    code=${words[1]:-}
    echo "tpu_worker $k exited launch=$launch_now run=$run code=$code"
  else  # started, never said it ended: killed, or the VM restarted
    echo "tpu_worker $k lost launch=$launch_now run=$run"
  fi
  if [ "$k" = 0 ] && [ -n "$runs" ]; then  # ROOT is shared: one worker speaks for the runs
    local name names
    IFS=, read -r -a names <<<"$runs"
    for name in "${names[@]}"; do
      echo "tpu_run $name $(run_state "$root/$name") $(run_step "$root/$name")"
    done
  fi
}

cmd_stop() {
  parse_args "$@"
  k=$(worker_index)
  local pid
  pid=$(lock_pid)
  # Signal only a pid that is this ROOT's driver: never one read from a file unchecked
  if lock_held && [ "$(lock_root)" = "$root" ] && is_driver "$pid"; then
    kill -TERM "$pid"
    echo "tpu_worker $k stopping launch=$(lock_launch)"
  else
    echo "tpu_worker $k none"
  fi
}

is_driver() {  # $1 is the pid of a tpu_worker.sh driver of this ROOT
  local args
  [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 1 ] || return 1
  args=$(tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline") || return 1
  grep -qx _drive <<<"$args" && grep -qxF -- "--root=$root" <<<"$args"
}

cmd_plan() {
  parse_args "$@"
  local name names
  IFS=, read -r -a names <<<"$runs"
  for name in "${names[@]}"; do
    if finished "$root/$name"; then continue; fi
    main_command "$name"
    printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; echo
  done
}

[ $# -ge 1 ] || usage
command=$1; shift
case $command in
  start) cmd_start "$@" ;;
  _drive) cmd_drive "$@" ;;
  status) cmd_status "$@" ;;
  stop) cmd_stop "$@" ;;
  plan) cmd_plan "$@" ;;
  *) usage ;;
esac
