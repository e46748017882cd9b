#!/usr/bin/env bash
# A TPU VM slice for oie-jax: create it, install the project on every worker, run one `oie-jax train` on
# all of them (jax.distributed auto-detects the pod), follow its log, stop it, delete the slice.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [OPTIONS] COMMAND [-- TRAIN_ARGS...]

Commands:
  create   create the TPU VM slice (with --queued: a queued resource that creates it when capacity frees)
  setup    install oie-jax on every worker: this checkout's committed files (git archive), or --source URL
  run      run `oie-jax train --config CONFIG --workdir WORKDIR --distributed TRAIN_ARGS` on every worker,
           streaming the output; with --retries N, a preempted slice is deleted, created and set up again
           and the same command re-run: training resumes from its last checkpoint in the gs:// workdir
  logs     follow the log of the run on worker 0 (~/oie-jax-train.log)
  stop     SIGTERM the training on every worker: it saves its step and exits (`run` resumes later)
  delete   delete the slice (and its queued resource)

Options:
  --name NAME            TPU VM name (required)
  --zone ZONE            zone, e.g. us-central2-b (required)
  --project PROJECT      Google Cloud project (default: gcloud's configured one)
  --accelerator TYPE     accelerator type (default: v4-8; e.g. v4-32, v5litepod-16)
  --runtime VERSION      TPU software version (default: tpu-ubuntu2204-base)
  --spot                 a Spot slice (cheaper; may be preempted: see --retries)
  --preemptible          a preemptible slice (older form of --spot)
  --queued               create through a queued resource named NAME-qr
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
      --config configs/llama3_8b_mmm_tpu.py --workdir gs://BUCKET/runs/oiellm-8b run \
      -- --config.model.init=gs://BUCKET/checkpoints/llama3-8b
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

NAME="" ZONE="" PROJECT="" ACCELERATOR="v4-8" RUNTIME="tpu-ubuntu2204-base" SPOT="" QUEUED=0
CONFIG="" WORKDIR="" SOURCE="copy" RETRIES=0 DRY_RUN=0 COMMAND=""
TRAIN_ARGS=()
REMOTE_DIR="oie-jax"  # in each worker's home
LOG="oie-jax-train.log"

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

create() {
  if ((QUEUED)); then
    gcloud_do compute tpus queued-resources create "$NAME-qr" "${LOCATION[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${SPOT:+"$SPOT"}
    echo "queued $NAME-qr; the slice exists once its state is ACTIVE:" >&2
    echo "  gcloud compute tpus queued-resources describe $NAME-qr --zone=$ZONE" >&2
  else
    gcloud_do compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" ${SPOT:+"$SPOT"}
  fi
}

setup() {
  local package clean="" unpack=""
  if [[ "$SOURCE" == "copy" ]]; then
    local root archive
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    archive="${TMPDIR:-/tmp}/oie-jax-$NAME.tar.gz"
    if ((DRY_RUN)); then
      echo "git -C $root archive --format=tar.gz -o $archive HEAD"
    else
      git -C "$root" archive --format=tar.gz -o "$archive" HEAD
    fi
    gcloud_do compute tpus tpu-vm scp "$archive" "$NAME:oie-jax.tar.gz" "${LOCATION[@]}" --worker=all
    clean="rm -rf $REMOTE_DIR && "
    unpack="tar -xzf oie-jax.tar.gz -C $REMOTE_DIR && "
    package="-e $REMOTE_DIR"
  else
    package="$(printf '%q' "$SOURCE")"
  fi
  on_workers "${clean}mkdir -p $REMOTE_DIR && ${unpack}python3 -m venv $REMOTE_DIR/.venv && \
$REMOTE_DIR/.venv/bin/pip install -q -U pip && $REMOTE_DIR/.venv/bin/pip install -q $package 'jax[tpu]'"
}

train_command() {
  [[ -n "$CONFIG" ]] || die "run needs --config"
  [[ "$WORKDIR" == gs://* ]] || die "run needs --workdir gs://...: a re-created slice resumes from the bucket"
  local args
  args="$(printf ' %q' --config "$CONFIG" --workdir "$WORKDIR" --distributed "${TRAIN_ARGS[@]}")"
  echo "cd $REMOTE_DIR && .venv/bin/oie-jax train$args 2>&1 | tee -a ~/$LOG; exit \${PIPESTATUS[0]}"
}

slice_state() {
  gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || echo GONE
}

delete() {
  if ((QUEUED)); then
    gcloud_do compute tpus queued-resources delete "$NAME-qr" "${LOCATION[@]}" --force --quiet
  else
    gcloud_do compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

run() {
  local command attempt=0 state
  command="$(train_command)"
  while true; do
    if on_workers "$command"; then
      return 0
    fi
    state="$(slice_state)"
    if [[ "$state" =~ ^(PREEMPTED|TERMINATED|GONE)$ ]] && ((attempt < RETRIES)); then
      attempt=$((attempt + 1))
      echo "tpu_pod.sh: slice $NAME is $state; re-creating it (retry $attempt of $RETRIES)" >&2
      [[ "$state" == GONE ]] || delete
      create
      if ((QUEUED)); then
        until [[ "$(slice_state)" == READY ]]; do sleep 60; done
      fi
      setup
      continue
    fi
    echo "tpu_pod.sh: the run failed (slice state: $state)" >&2
    return 1
  done
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) run ;;
  logs) on_workers "tail -n +1 -F ~/$LOG" 0 ;;
  stop) on_workers "pkill -TERM -f 'oie-jax train' || true" ;;
  delete) delete ;;
esac
