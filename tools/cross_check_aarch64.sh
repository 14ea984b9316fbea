#!/usr/bin/env bash
# Cross-compiles gencore's CPU module _core for aarch64 Linux and checks that it
# would load there: the build an ARM machine makes (portable kernels only), then
# the undefined-symbol check with the aarch64 nm. Exits non-zero on any failure.
#
#   tools/cross_check_aarch64.sh          (from anywhere; uses the active python)
#
# Needs: aarch64-linux-gnu-g++ / -nm (installed with apt-get when missing: as
# root, or through passwordless sudo), cmake >= 3.24 and pybind11 for the
# active python (pip-installed into it when missing).
# Env: PYTHON (default python3), GENCORE_CROSS_BUILD_DIR (default
# build/cross-aarch64), CMAKE_BUILD_PARALLEL_LEVEL (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "cross_check_aarch64: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- toolchain
packages="g++-aarch64-linux-gnu binutils-aarch64-linux-gnu"
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-nm >/dev/null 2>&1; then
  say "installing the aarch64 cross toolchain ($packages)"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    die "aarch64-linux-gnu-g++ is missing and apt-get needs root (run as root, or install: $packages)"
  fi
  command -v apt-get >/dev/null 2>&1 || die "aarch64-linux-gnu-g++ is missing and there is no apt-get (install: $packages)"
  # shellcheck disable=SC2086
  "${as_root[@]}" apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq $packages || die "apt-get install $packages failed"
  command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || die "aarch64-linux-gnu-g++ still missing after apt-get install"
fi

# ---------------------------------------------------------------- cmake, pybind11
python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || die "no $python"
if ! "$python" -c "import pybind11" >/dev/null 2>&1; then
  say "installing pybind11 into $("$python" -c 'import sys; print(sys.prefix)')"
  "$python" -m pip install -q "pybind11>=2.12" || die "pip install pybind11 failed"
fi
cmake_ok() { command -v cmake >/dev/null 2>&1 && "$python" - "$(cmake --version | head -1)" <<'PY'
import re, sys
m = re.search(r"(\d+)\.(\d+)", sys.argv[1])
sys.exit(0 if m and (int(m[1]), int(m[2])) >= (3, 24) else 1)
PY
}
if ! cmake_ok; then
  say "installing cmake >= 3.24 into the python environment"
  "$python" -m pip install -q "cmake>=3.24" || die "pip install cmake failed"
  hash -r
  cmake_ok || die "no cmake >= 3.24 on PATH"
fi
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

# ---------------------------------------------------------------- build + check
build=${GENCORE_CROSS_BUILD_DIR:-build/cross-aarch64}
soabi=$("$python" -c "import sys; print(f'cpython-{sys.version_info[0]}{sys.version_info[1]}-aarch64-linux-gnu')")
# FindPython does not ask a host interpreter for its headers when cross
# compiling: hand them over (Python.h is the same on both; pyconfig.h's sizes
# agree for the two LP64 targets).
python_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
[ -f "$python_include/Python.h" ] || die "no Python.h in $python_include (install the python development headers)"
rm -rf "$build"
start=$(date +%s)
# The post-link undefined-symbol check runs inside the build already (with the
# toolchain's nm); it is run once more below so this script states the verdict.
cmake -S . -B "$build" "${generator[@]}" \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/toolchain-aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DGENCORE_CUDA=OFF \
  -DPython_EXECUTABLE="$(command -v "$python")" -DPython_INCLUDE_DIR="$python_include" \
  -DPYTHON_MODULE_EXTENSION=".$soabi.so" -DPYTHON_MODULE_DEBUG_POSTFIX="" \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; die "configure failed (log above)"; }
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} cmake --build "$build" || die "build failed (see above)"

shopt -s nullglob
modules=("$build"/_core*.so)
[ "${#modules[@]}" -eq 1 ] || die "expected one _core module in $build, found ${#modules[@]}"
module=${modules[0]}
machine=$(aarch64-linux-gnu-readelf -h "$module" | sed -n 's/^ *Machine: *//p')
[ "$machine" = "AArch64" ] || die "$module is built for '$machine', not AArch64"
cmake -DNM=aarch64-linux-gnu-nm -DMODULE="$module" -P cmake/check_undefined_symbols.cmake ||
  die "$module has undefined symbols: it would not import on aarch64"
say "ok: $module (AArch64) has no undefined symbols beyond Python's and the system libraries' ($(( $(date +%s) - start )) s)"
