#!/usr/bin/env bash
# The training on one TPU VM worker, detached from the ssh session that starts it (tpu_pod.sh ships this
# script to every worker): a dropped connection leaves it running, and `follow` finds it again.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: worker_train.sh start WORKDIR [TRAIN_ARGS...] | follow | stop | status

  start    run `oie-jax train --workdir WORKDIR --distributed TRAIN_ARGS` in a session of its own (setsid,
           nohup), its output in ~/oie-jax-train.log, and copied to WORKDIR/logs/HOST.log every minute and at
           the end when WORKDIR is a bucket; refuses while a run is going
  follow   print the log and follow it until the run ends; exit with the run's exit status
  stop     SIGTERM the run (it saves its step) and wait for it to end; exit 0 once it has
  status   print "running PID", "exited STATUS" or "none"

Environment: OIE_JAX (default ~/oie-jax/.venv/bin/oie-jax), RUN_DIR (where the run starts, default
~/oie-jax), STATE_DIR (log, pid and status files, default ~).
EOF
}

die() {
  echo "worker_train.sh: $*" >&2
  exit 2
}

OIE_JAX="${OIE_JAX:-$HOME/oie-jax/.venv/bin/oie-jax}"
RUN_DIR="${RUN_DIR:-$HOME/oie-jax}"
STATE_DIR="${STATE_DIR:-$HOME}"
LOG="$STATE_DIR/oie-jax-train.log"
PID_FILE="$STATE_DIR/oie-jax-train.pid"
STATUS_FILE="$STATE_DIR/oie-jax-train.status"
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

running_pid() {  # the run's process (its session leader) when it is alive
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  local workdir="${1:?start needs WORKDIR}" pid
  shift
  if pid="$(running_pid)"; then
    die "a run is going already (pid $pid): follow it, or stop it first"
  fi
  [[ -x "$OIE_JAX" ]] || die "no oie-jax at $OIE_JAX (run tpu_pod.sh setup first)"
  rm -f "$STATUS_FILE"
  # A session of its own, so that the ssh session's end (a hangup) does not reach it. The wrapper traps
  # SIGTERM (a handler, not an ignore, so oie-jax gets the signal as usual) to copy the log and write the
  # exit status once the run has saved its step and ended.
  # shellcheck disable=SC2016  # the inner bash expands them
  setsid nohup bash -c '
    cd "$1" || exit 2
    self=$2 workdir=$3 log=$4 status_file=$5
    shift 5
    trap true TERM
    if [[ $workdir == gs://* ]]; then
      (while sleep 60; do "$self" copy-log "$workdir" 2>/dev/null; done) &
      copier=$!
    fi
    "$@" > "$log" 2>&1 < /dev/null &
    wait $!; status=$?
    while kill -0 $! 2>/dev/null; do wait $!; status=$?; done  # a trapped signal ends `wait` early
    if [[ -n ${copier:-} ]]; then
      kill "$copier" 2>/dev/null
      "$self" copy-log "$workdir" || echo "worker_train.sh: could not copy the log to $workdir/logs" >> "$log"
    fi
    echo "$status" > "$status_file"
  ' wrapper "$RUN_DIR" "$SELF" "$workdir" "$LOG" "$STATUS_FILE" "$OIE_JAX" train --workdir "$workdir" \
    --distributed "$@" > /dev/null 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  echo "worker_train.sh: started (pid $!, log $LOG)" >&2
}

copy_log() {  # WORKDIR: the log to WORKDIR/logs/HOST.log, through the run's own bucket client
  "$(dirname "$OIE_JAX")/python" - "$LOG" "${1:?copy-log needs WORKDIR}/logs/$(hostname).log" <<'PY'
import sys

import oie_jax  # noqa: F401  (its choice of bucket client)
from etils import epath

epath.Path(sys.argv[2]).write_bytes(open(sys.argv[1], "rb").read())
PY
}

follow() {
  local pid=""
  [[ -f "$PID_FILE" ]] || die "no run was started here"
  pid="$(running_pid || true)"
  if [[ -n "$pid" ]]; then
    tail -n +1 -F "$LOG" --pid="$pid" 2>/dev/null
  else
    cat "$LOG" 2>/dev/null || true
  fi
  for _ in $(seq 50); do  # the wrapper writes the status as it exits
    [[ -f "$STATUS_FILE" ]] && exit "$(cat "$STATUS_FILE")"
    sleep 0.1
  done
  die "the run ended without an exit status (killed?)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "worker_train.sh: no run is going" >&2
    return 0
  fi
  kill -TERM -- "-$pid"  # its whole session: the wrapper, oie-jax and the log copier
  for _ in $(seq 600); do
    running_pid >/dev/null || { echo "worker_train.sh: stopped (pid $pid)" >&2; return 0; }
    sleep 0.5
  done
  die "pid $pid is still running 5 minutes after SIGTERM"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "running $pid"
  elif [[ -f "$STATUS_FILE" ]]; then
    echo "exited $(cat "$STATUS_FILE")"
  else
    echo "none"
  fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  follow) follow ;;
  stop) stop ;;
  status) status ;;
  copy-log) shift; copy_log "$@" ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
