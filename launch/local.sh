#!/usr/bin/env bash
# N oie-jax processes on this machine, as on N hosts of a pod: the way to rehearse a multi-host run on a
# laptop. Process 0 is the coordinator on 127.0.0.1; collectives go over gloo on the CPU; each process
# has DEVICES_PER_PROCESS virtual CPU devices.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh N COMMAND...

Starts N copies of COMMAND (an `oie-jax train ...` command line), each with
  --coordinator-address 127.0.0.1:PORT --num-processes N --process-id I
appended, JAX on the CPU with DEVICES_PER_PROCESS virtual devices each (default 1; a config's
mesh.shape must multiply to N x DEVICES_PER_PROCESS). Process 0 writes to this terminal; the others
to LOG_DIR/process-I.log (default: a new temporary directory). When a process fails, the others are
stopped; the exit status is the first failure's.

Environment: PORT (default: a free port), DEVICES_PER_PROCESS, LOG_DIR.

Example: two processes of two devices each fine-tuning the tiny debug config, FSDP over 2 devices
per process (mesh.shape, as within a slice) x 2 processes (mesh.dcn_shape, as across hosts); the losses
equal one process with four devices (tests/test_train_learned.py):
  DEVICES_PER_PROCESS=2 launch/local.sh 2 oie-jax train --config configs/tiny_debug.py \
      --workdir runs/rehearsal --config.mesh.shape='(1, 2, 1)' --config.mesh.dcn_shape='(1, 2, 1)'
EOF
}

if [[ $# -ge 1 && ("$1" == "-h" || "$1" == "--help") ]]; then
  usage
  exit 0
fi
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  usage >&2
  exit 2
fi
COUNT="$1"
shift

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PORT="${PORT:-$(free_port)}"
LOG_DIR="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/oie-jax-local.XXXXXX")}"
mkdir -p "$LOG_DIR"
export JAX_PLATFORMS=cpu
# Our device count replaces any in XLA_FLAGS (the other flags stay).
read -ra given <<<"${XLA_FLAGS:-}"
flags=()
for flag in "${given[@]+"${given[@]}"}"; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || flags+=("$flag")
done
export XLA_FLAGS="${flags[*]+"${flags[*]}"} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((rank = 0; rank < COUNT; rank++)); do
  cluster=(--coordinator-address "127.0.0.1:$PORT" --num-processes "$COUNT" --process-id "$rank")
  if ((rank == 0)); then
    "$@" "${cluster[@]}" &
  else
    "$@" "${cluster[@]}" >"$LOG_DIR/process-$rank.log" 2>&1 &
  fi
  pids+=("$!")
done
echo "local.sh: $COUNT processes (coordinator 127.0.0.1:$PORT); logs of processes 1-$((COUNT - 1)): $LOG_DIR" >&2

# Polls rather than `wait -n`, which the bash of macOS (3.2) lacks. Processes stopped after a failure get
# a minute to save their step (SIGTERM), then SIGKILL: one may hang in a collective with a dead peer.
status=0
stopped_at=0
running=("${!pids[@]}")
while ((${#running[@]})); do
  if ((status != 0 && SECONDS - stopped_at > 60)); then
    for rank in "${running[@]}"; do
      kill -KILL "${pids[$rank]}" 2>/dev/null || true
    done
  fi
  still=()
  for rank in "${running[@]}"; do
    if kill -0 "${pids[$rank]}" 2>/dev/null; then
      still+=("$rank")
      continue
    fi
    code=0
    wait "${pids[$rank]}" || code=$?
    if ((code != 0 && status == 0)); then
      status=$code
      echo "local.sh: process $rank failed (exit $code); stopping the others" >&2
      ((rank == 0)) || tail -n 20 "$LOG_DIR/process-$rank.log" >&2
      stop_all
      stopped_at=$SECONDS
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  ((${#running[@]} == 0)) || sleep 1
done
exit "$status"
