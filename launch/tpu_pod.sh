#!/usr/bin/env bash
# A TPU VM slice for oie-jax: create it, install the project on every worker (launch/worker_setup.sh), run
# one `oie-jax train` on all of them detached from the ssh session (launch/worker_train.sh; jax.distributed
# auto-detects the pod), follow its log, stop it, delete the slice.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [OPTIONS] COMMAND [-- TRAIN_ARGS...]

Commands:
  create   create the TPU VM slice (with --queued: a queued resource that creates it when capacity frees,
           waited for up to --wait-minutes)
  setup    install oie-jax on every worker with worker_setup.sh (which first finds or installs Python 3.11+):
           this checkout's committed files (git archive), or --source URL
  run      start `oie-jax train --config CONFIG --workdir WORKDIR --distributed TRAIN_ARGS` on every worker
           in a session of its own (a dropped connection leaves it running; its log is ~/oie-jax-train.log
           and WORKDIR/logs/WORKER.log), then follow worker 0's log until the run ends. When following
           stops, the slice's state tells why: still READY with the run going (the connection dropped:
           follow again), READY with the run ended (it failed: exit 1), or preempted (PREEMPTED, TERMINATED,
           gone, queued resource SUSPENDED or FAILED): with --retries N the slice is deleted, created and
           set up again and the run started again, resuming from its last checkpoint in the gs:// workdir
  logs     follow the log of the run on worker 0 from its start (re-attach after a dropped connection)
  stop     SIGTERM the training on every worker and wait until it has saved its step and ended (exit 0)
  delete   delete the slice (and its queued resource)

Options:
  --name NAME            TPU VM name (required)
  --zone ZONE            zone, e.g. us-central2-b (required)
  --project PROJECT      Google Cloud project (default: gcloud's configured one)
  --accelerator TYPE     accelerator type (default: v4-8; e.g. v4-32, v5litepod-16)
  --runtime VERSION      TPU software version (default: the one Cloud TPU's documentation names for the
                         accelerator, https://cloud.google.com/tpu/docs/runtimes: v2-alpha-tpuv6e for v6e,
                         v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for v5e, tpu-ubuntu2204-base for v4
                         and older)
  --spot                 a Spot slice (cheaper; may be preempted: see --retries)
  --preemptible          a preemptible slice (older form of --spot; not for --queued)
  --queued               create through a queued resource named NAME-qr (its flags:
                         https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create)
  --wait-minutes N       how long create (queued) and a retry wait for the slice (default: 120)
  --config FILE          oie-jax run config, relative to the project root (run)
  --workdir gs://...     the run's workdir; a bucket, so that a re-created slice resumes from it (run)
  --source URL|copy      what setup installs: a pip/git URL, or "copy" of this checkout (default)
  --retries N            times `run` re-creates a preempted slice (default: 0)
  --dry-run              print every gcloud command instead of running it
  -h, --help             this help

Example (the 8B recipe on a v4-32 Spot slice):
  launch/tpu_pod.sh --name oiellm --zone us-central2-b --accelerator v4-32 --spot create
  launch/tpu_pod.sh --name oiellm --zone us-central2-b setup
  launch/tpu_pod.sh --name oiellm --zone us-central2-b --accelerator v4-32 --spot --retries 3 \
      --config configs/llama3_8b_mmm_tpu.py --workdir gs://<BUCKET>/runs/oiellm-8b run \
      -- --config.model.init=gs://<BUCKET>/checkpoints/llama3-8b
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

NAME="" ZONE="" PROJECT="" ACCELERATOR="v4-8" RUNTIME="" SPOT="" QUEUED=0 WAIT_MINUTES=120
CONFIG="" WORKDIR="" SOURCE="copy" RETRIES=0 DRY_RUN=0 COMMAND=""
TRAIN_ARGS=()
REMOTE_DIR="oie-jax"  # in each worker's home
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

while (($#)); do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift 2 ;;
    --runtime) RUNTIME="${2:?--runtime needs a value}"; shift 2 ;;
    --spot) SPOT="--spot"; shift ;;
    --preemptible) SPOT="--preemptible"; shift ;;
    --queued) QUEUED=1; shift ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    --retries) RETRIES="${2:?--retries needs a value}"; shift 2 ;;
    --wait-minutes) WAIT_MINUTES="${2:?--wait-minutes needs a value}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    create | setup | run | logs | stop | delete)
      [[ -z "$COMMAND" ]] || die "one command at a time (got $COMMAND and $1)"
      COMMAND="$1"; shift ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[[ -n "$COMMAND" ]] || { usage >&2; exit 2; }
[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ "$RETRIES" =~ ^[0-9]+$ ]] || die "--retries must be a whole number, got $RETRIES"
[[ "$WAIT_MINUTES" =~ ^[0-9]+$ ]] || die "--wait-minutes must be a whole number, got $WAIT_MINUTES"
((QUEUED)) && [[ "$SPOT" == --preemptible ]] && die "queued resources take --spot, not --preemptible"
if [[ -z "$RUNTIME" ]]; then  # https://cloud.google.com/tpu/docs/runtimes
  case "$ACCELERATOR" in
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    *) RUNTIME="tpu-ubuntu2204-base" ;;
  esac
fi

LOCATION=("--zone=$ZONE")
[[ -z "$PROJECT" ]] || LOCATION+=("--project=$PROJECT")

# Runs a command, or with --dry-run prints it (one line, shell-quoted: it can be pasted as it is).
gcloud_do() {
  if ((DRY_RUN)); then
    printf '%q ' gcloud "$@" | sed 's/ $//'
    echo
  else
    gcloud "$@"
  fi
}

on_workers() {  # COMMAND_STRING [WORKER]: run a shell command over ssh on the workers (default: all)
  gcloud_do compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" "--worker=${2:-all}" "--command=$1"
}

setup() {
  local package clean="" unpack=""
  gcloud_do compute tpus tpu-vm scp "$LAUNCH_DIR/worker_setup.sh" "$LAUNCH_DIR/worker_train.sh" "$NAME:" \
    "${LOCATION[@]}" --worker=all
  if [[ "$SOURCE" == "copy" ]]; then
    local archive
    archive="${TMPDIR:-/tmp}/oie-jax-$NAME.tar.gz"
    if ((DRY_RUN)); then
      echo "git -C $LAUNCH_DIR/.. archive --format=tar.gz -o $archive HEAD"
    else
      git -C "$LAUNCH_DIR/.." archive --format=tar.gz -o "$archive" HEAD
    fi
    gcloud_do compute tpus tpu-vm scp "$archive" "$NAME:oie-jax.tar.gz" "${LOCATION[@]}" --worker=all
    clean="rm -rf $REMOTE_DIR && "
    unpack="mkdir -p $REMOTE_DIR && tar -xzf oie-jax.tar.gz -C $REMOTE_DIR && "
    package="./$REMOTE_DIR"
  else
    package="$SOURCE"
  fi
  on_workers "${clean}${unpack}VENV=$REMOTE_DIR/.venv bash worker_setup.sh $(printf '%q' "$package")"
}

train_args() {
  [[ -n "$CONFIG" ]] || die "run needs --config"
  [[ "$WORKDIR" == gs://* ]] || die "run needs --workdir gs://...: a re-created slice resumes from the bucket"
  printf ' %q' "$WORKDIR" --config "$CONFIG" "${TRAIN_ARGS[@]}"
}

slice_state() {  # READY, PREEMPTED, ...; GONE when there is no such slice; a queued resource's own state first
  local state
  if ((QUEUED)); then
    state="$(gcloud compute tpus queued-resources describe "$NAME-qr" "${LOCATION[@]}" \
      --format='value(state.state)' 2>/dev/null || echo GONE)"
    [[ "$state" == ACTIVE ]] || { echo "$state"; return; }
  fi
  gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || echo GONE
}

wait_until_ready() {  # the slice READY within --wait-minutes, or one line saying what it is instead
  local state deadline=$((SECONDS + WAIT_MINUTES * 60))
  ((DRY_RUN)) && return 0
  while true; do
    state="$(slice_state)"
    case "$state" in
      READY) return 0 ;;
      FAILED | SUSPENDED | SUSPENDING) die "slice $NAME: its queued resource is $state (gcloud compute tpus queued-resources describe $NAME-qr)" ;;
    esac
    ((SECONDS < deadline)) || die "slice $NAME is still $state after $WAIT_MINUTES minutes (--wait-minutes)"
    sleep "${POLL_SECONDS:-60}"
  done
}

create() {
  if ((QUEUED)); then
    gcloud_do compute tpus queued-resources create "$NAME-qr" "${LOCATION[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${SPOT:+"$SPOT"}
    echo "tpu_pod.sh: queued $NAME-qr; waiting up to $WAIT_MINUTES minutes for the slice" >&2
    wait_until_ready
  else
    gcloud_do compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" ${SPOT:+"$SPOT"}
  fi
}

delete() {
  if ((QUEUED)); then
    gcloud_do compute tpus queued-resources delete "$NAME-qr" "${LOCATION[@]}" --force --quiet
  else
    gcloud_do compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

follow() {  # worker 0's log until the run ends; the run's exit status
  on_workers "bash worker_train.sh follow" 0
}

run() {
  local args attempt=0 reattached=0 state status
  args="$(train_args)"
  on_workers "bash worker_train.sh start$args" || true  # (a failed start shows in the state below)
  ((DRY_RUN)) && { follow; return 0; }
  while true; do
    if follow; then
      echo "tpu_pod.sh: the run finished" >&2
      return 0
    fi
    state="$(slice_state)"
    if [[ "$state" == READY ]]; then
      status="$(on_workers "bash worker_train.sh status" 0 2>/dev/null | tail -n 1 || true)"
      if [[ "$status" == running* ]] && ((reattached < 30)); then
        reattached=$((reattached + 1))
        echo "tpu_pod.sh: lost worker 0's log; the run goes on ($status): following it again" >&2
        sleep "${POLL_SECONDS:-10}"
        continue
      fi
      echo "tpu_pod.sh: the run failed on a READY slice (worker 0: ${status:-unreachable}); see tpu_pod.sh logs" >&2
      return 1
    fi
    case "$state" in
      PREEMPTED | TERMINATED | GONE | SUSPENDED | SUSPENDING | FAILED) ;;
      *) echo "tpu_pod.sh: the run stopped and slice $NAME is $state: not a preemption, not retrying" >&2
         return 1 ;;
    esac
    if ((attempt >= RETRIES)); then
      echo "tpu_pod.sh: slice $NAME is $state (preempted); no retries left (--retries $RETRIES)" >&2
      return 1
    fi
    attempt=$((attempt + 1))
    echo "tpu_pod.sh: slice $NAME is $state (preempted); re-creating it (retry $attempt of $RETRIES)" >&2
    [[ "$state" == GONE ]] || delete
    create
    wait_until_ready
    setup
    on_workers "bash worker_train.sh start$args" || true
  done
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) run ;;
  logs) follow ;;
  stop) on_workers "bash worker_train.sh stop" ;;
  delete) delete ;;
esac
