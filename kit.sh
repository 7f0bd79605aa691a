#!/usr/bin/env bash
# One entry point for the kit. Every command first makes sure .venv holds the pinned
# dependencies (created when missing, reinstalled only when the pins changed).
#
#   ./kit.sh run     run the main job: every notebook headless into runs/<run id>/
#   ./kit.sh test    run the test suite (what CI runs)
#   ./kit.sh lab     open JupyterLab on notebooks/
#   ./kit.sh bench   run the benchmarks (speed, memory, search) into runs/bench/<time>/;
#                    ./kit.sh bench --help lists them, --quick is a smoke-size run
#   ./kit.sh lock    re-resolve requirements.in into requirements.txt (maintainers only)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.kit-stamp"
KERNEL_NAME=gfl-kit

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "kit.sh: Python 3.11 is required (set PYTHON=/path/to/python3.11)." >&2
  return 1
}

wanted_stamp() {
  cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1
}

pip_quiet() {
  # pip, minus the warnings some machines' pip configs print for every package (unreachable
  # extra indexes); pip's own exit status is kept (pipefail).
  "$VENV/bin/python" -m pip "$@" --quiet 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

ensure_venv() {
  local want; want=$(wanted_stamp)
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  local py; py=$(find_python)
  echo "kit.sh: installing the pinned environment into $VENV (first run takes about 2-3 minutes)..." >&2
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  pip_quiet install --upgrade "pip>=24"
  pip_quiet install -r requirements.txt
  pip_quiet install --no-deps -r requirements-nodeps.txt
  pip_quiet install --no-deps --no-build-isolation -e .
  # Register the venv's kernel under its own name so papermill and JupyterLab never pick
  # another Python (papermill NoSuchKernel, docs/measured-facts.md).
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name "$KERNEL_NAME" \
      --display-name "Python 3.11 (gfl kit)" >/dev/null
  echo "$want" > "$STAMP"
  echo "kit.sh: environment ready." >&2
}

ensure_chromium() {
  # The report test opens the HTML report in a real headless browser (Debian's chromium).
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "kit.sh: installing Debian's chromium for the report test..." >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  else
    echo "kit.sh: the tests need Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu)." >&2
    return 1
  fi
}

cmd=${1:-help}; shift || true
case "$cmd" in
  run)
    ensure_venv
    exec "$VENV/bin/python" -m helpers.main_job "$@" ;;
  test)
    ensure_venv
    ensure_chromium
    # pytest exits 5 when it collects nothing; that is a failure here, and so is any other non-zero.
    exec "$VENV/bin/python" -m pytest "$@" ;;
  lab)
    ensure_venv
    exec "$VENV/bin/jupyter" lab --notebook-dir=notebooks "$@" ;;
  bench)
    ensure_venv
    exec "$VENV/bin/python" -m bench "$@" ;;
  lock)
    py=$(find_python); tmp=$(mktemp -d)
    "$py" -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install --quiet -r requirements.in
    { sed -n '1,3p' requirements.txt
      "$tmp/venv/bin/pip" freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$/torch==\1/'
    } > requirements.txt.new && mv requirements.txt.new requirements.txt
    rm -rf "$tmp"; echo "requirements.txt re-locked; update environment.yml to match (a test checks)." ;;
  venv)
    ensure_venv ;;
  help|-h|--help)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "kit.sh: unknown command '$cmd'. Use one of: run, test, lab, bench, lock." >&2; exit 2 ;;
esac
