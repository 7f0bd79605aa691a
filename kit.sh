#!/usr/bin/env bash
# One entry point for the kit. Every command first makes sure .venv holds the pinned
# dependencies (created when missing, reinstalled only when the pins changed).
#
#   ./kit.sh run     run the main job: every notebook headless into runs/<run id>/
#   ./kit.sh test    run the test suite (what CI runs)
#   ./kit.sh lab     open JupyterLab on notebooks/ (the clean twins are in notebooks/clean/)
#   ./kit.sh clean   rewrite notebooks/clean/: each notebook without outputs (CI checks them)
#   ./kit.sh bench   run the benchmarks (speed, memory, search) into runs/bench/<time>/;
#                    ./kit.sh bench --help lists them, --quick is a smoke-size run
#   ./kit.sh lock    re-resolve requirements.in into requirements.txt (maintainers only)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.kit-stamp"
KERNEL_NAME=gfl-kit

SUPPORTED="3.11 3.12 3.13"
# PyTorch's own index of CPU-only wheels (a few hundred MB instead of several GB of CUDA).
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

find_python() {
  # PYTHON=/path/to/python3.X picks the interpreter; otherwise the first supported one found.
  local candidate v
  if [ -n "${PYTHON:-}" ]; then
    v=$(py_version "$PYTHON") || true
    case " $SUPPORTED " in
      *" $v "*) echo "$PYTHON"; return 0 ;;
    esac
    echo "kit.sh: PYTHON=$PYTHON is Python ${v:-?}; the kit supports Python $SUPPORTED." >&2
    return 1
  fi
  for candidate in python3.11 python3.12 python3.13 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    v=$(py_version "$candidate") || continue
    case " $SUPPORTED " in
      *" $v "*) echo "$candidate"; return 0 ;;
    esac
  done
  echo "kit.sh: Python 3.11, 3.12 or 3.13 is required (set PYTHON=/path/to/python3.X)." >&2
  return 1
}

check_venv_module() {
  # Debian and Ubuntu ship venv/ensurepip in a separate package.
  if ! "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    local v; v=$(py_version "$1")
    echo "kit.sh: $1 (Python $v) has no venv/ensurepip module. On Debian/Ubuntu:" \
         "sudo apt-get install python$v-venv   (or python3-venv), then run this again." >&2
    return 1
  fi
}

wanted_stamp() {
  { cat requirements.txt requirements-nodeps.txt pyproject.toml; echo "python=$1 torch=${GFL_TORCH:-cpu}"; } |
    sha256sum | cut -d' ' -f1
}

pip_quiet() {
  # pip, minus the warnings some machines' pip configs print for every package (unreachable
  # extra indexes); pip's own exit status is kept (pipefail).
  "$VENV/bin/python" -m pip "$@" --quiet 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

install_torch() {
  # The kit runs on the CPU. GFL_TORCH=cpu (default) takes torch from PyTorch's CPU index;
  # GFL_TORCH=cuda takes the plain pin from PyPI (on Linux, a CUDA build of several GB).
  local pin; pin=$(grep -E '^torch==' requirements.txt)
  local mode=${GFL_TORCH:-cpu}
  case "$mode" in
    cpu)
      if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/torch/', timeout=10)" >/dev/null 2>&1; then
        echo "kit.sh: torch: PyTorch's CPU-only build ($pin from $TORCH_CPU_INDEX)." >&2
        pip_quiet install "$pin" --index-url "$TORCH_CPU_INDEX"
      else
        echo "kit.sh: torch: PyTorch's CPU index cannot be reached; installing the plain pin $pin." >&2
        pip_quiet install "$pin"
      fi ;;
    cuda)
      echo "kit.sh: torch: the plain pin $pin (GFL_TORCH=cuda; a CUDA build on Linux)." >&2
      pip_quiet install "$pin" ;;
    *)
      echo "kit.sh: GFL_TORCH must be 'cpu' or 'cuda', not '$mode'." >&2; return 2 ;;
  esac
}

report_torch() {
  "$VENV/bin/python" -c 'import torch; b = "CUDA " + torch.version.cuda if torch.version.cuda else "CPU-only"; print(f"kit.sh: torch {torch.__version__} installed ({b} build).")' >&2
}

ensure_venv() {
  local py v want
  py=$(find_python)
  v=$(py_version "$py")
  want=$(wanted_stamp "$v")
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  if [ -x "$VENV/bin/python" ] && [ "$(py_version "$VENV/bin/python")" != "$v" ]; then
    echo "kit.sh: $VENV is Python $(py_version "$VENV/bin/python"); rebuilding it for Python $v." >&2
    rm -rf "$VENV"
  fi
  check_venv_module "$py"
  echo "kit.sh: installing the pinned environment into $VENV with Python $v (first run takes about 2-4 minutes)..." >&2
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  pip_quiet install --upgrade "pip>=24"
  install_torch
  pip_quiet install -r requirements.txt
  pip_quiet install --no-deps -r requirements-nodeps.txt
  report_torch
  # The notebooks import helpers/ from any folder: put the project on the venv's path (what
  # an editable install does, without building anything).
  "$VENV/bin/python" -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "gfl-kit.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
  # Register the venv's kernel under its own name so papermill and JupyterLab never pick
  # another Python (papermill NoSuchKernel, docs/measured-facts.md).
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name "$KERNEL_NAME" \
      --display-name "Python $v (gfl kit)" >/dev/null
  # A fresh environment compiles pynndescent's numba functions on the first `import umap`
  # (about 20 s on 2 cores; numba keeps them in the venv's __pycache__). Do it here, once, rather
  # than in the middle of the first main job (docs/benchmarks.md section 1).
  echo "kit.sh: compiling UMAP's numba code once (about 20 s)..." >&2
  "$VENV/bin/python" -c 'import umap' 2>/dev/null || echo "kit.sh: 'import umap' failed; notebook 07 will show why." >&2
  echo "$want" > "$STAMP"
  echo "kit.sh: environment ready." >&2
}

ci_mode() { case "${CI:-}" in 1|true|TRUE|True|yes) return 0 ;; *) return 1 ;; esac; }

ensure_chromium() {
  # The report and JupyterLab tests open pages in a real headless browser (Debian's chromium).
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "kit.sh: installing Debian's chromium for the browser tests..." >&2
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2; then
      return 0
    fi
  fi
  if ci_mode; then
    echo "kit.sh: CI needs Chromium for the browser tests and it could not be installed." >&2
    return 1
  fi
  echo "kit.sh: Chromium is not installed, so the browser tests will be skipped" \
       "(install it with 'sudo apt-get install -y chromium')." >&2
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
    lab_args=()
    if [ "$(id -u)" = 0 ]; then
      echo "kit.sh: running as root (as in a container): starting JupyterLab with --allow-root." >&2
      lab_args+=(--allow-root)
    fi
    exec "$VENV/bin/jupyter" lab --notebook-dir=notebooks "${lab_args[@]}" "$@" ;;
  clean)
    ensure_venv
    exec "$VENV/bin/python" scripts/clean_notebooks.py "$@" ;;
  bench)
    ensure_venv
    exec "$VENV/bin/python" -m bench "$@" ;;
  lock)
    py=$(PYTHON=${PYTHON:-python3.11} find_python); tmp=$(mktemp -d)
    "$py" -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install --quiet -r requirements.in
    { sed -n '1,3p' requirements.txt
      "$tmp/venv/bin/pip" freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$/torch==\1/'
    } > requirements.txt.new && mv requirements.txt.new requirements.txt
    rm -rf "$tmp"; echo "requirements.txt re-locked; update environment.yml to match (a test checks)." ;;
  venv)
    ensure_venv ;;
  help|-h|--help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "kit.sh: unknown command '$cmd'. Use one of: run, test, lab, clean, bench, lock." >&2; exit 2 ;;
esac
