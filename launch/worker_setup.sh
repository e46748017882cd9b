#!/usr/bin/env bash
# Installs oie-jax on one TPU VM worker (tpu_pod.sh setup ships this script to every worker and runs it
# there). Python 3.11 or newer comes first: the TPU runtimes run Ubuntu 22.04, whose python3 is 3.10,
# which neither oie-jax nor current JAX support.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/worker_setup.sh PACKAGE [PIP_ARGS...]

Finds a Python 3.11 or newer (PYTHON if set, else python3.13, python3.12, python3.11, python3 on PATH),
or installs Ubuntu's python3.11 with apt-get when there is none; creates the virtual environment VENV
and installs PACKAGE (a directory, a pip/git URL or a requirement) and EXTRA into it with pip, passing
PIP_ARGS. Stops with one line saying what to do when no such Python can be found or installed.

Environment: PYTHON, VENV (default oie-jax/.venv), EXTRA (default 'jax[tpu]'; empty for none).
EOF
}

die() {
  echo "worker_setup.sh: $*" >&2
  exit 2
}

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  [[ $# -ge 1 ]] && exit 0
  exit 2
fi
PACKAGE="$1"
shift
VENV="${VENV:-oie-jax/.venv}"
EXTRA="${EXTRA-jax[tpu]}"

supported() {  # INTERPRETER: is it Python 3.11 or newer?
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

find_python() {
  local candidate
  if [[ -n "${PYTHON:-}" ]]; then
    supported "$PYTHON" && echo "$PYTHON"
    return 0
  fi
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && supported "$(command -v "$candidate")"; then
      command -v "$candidate"
      return 0
    fi
  done
}

python="$(find_python)"
if [[ -z "$python" && -z "${PYTHON:-}" ]] && command -v apt-get >/dev/null; then
  echo "worker_setup.sh: no Python 3.11+ here; installing Ubuntu's python3.11" >&2
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq update >&2 &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y python3.11 python3.11-venv >&2 || true
  python="$(find_python)"
fi
if [[ -z "$python" ]]; then
  found="$(command -v python3 >/dev/null && python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
  die "no Python 3.11 or newer on this worker (python3 is ${found:-missing}${PYTHON:+; PYTHON=$PYTHON is not one})," \
      "and none could be installed: install python3.11 and python3.11-venv, or set PYTHON to one"
fi

echo "worker_setup.sh: $("$python" -c 'import sys; print(sys.version.split()[0])') at $python -> $VENV" >&2
"$python" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip
read -ra extra <<< "$EXTRA"  # a list of requirements, split on spaces (never globbed)
"$VENV/bin/python" -m pip install -q "$@" "$PACKAGE" "${extra[@]}"
"$VENV/bin/python" -c 'import oie_jax' || die "installed, but $VENV/bin/python cannot import oie_jax"
echo "worker_setup.sh: oie-jax installed in $VENV" >&2
