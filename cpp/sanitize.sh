#!/usr/bin/env bash
# Build slimgpt._core with AddressSanitizer + UBSan and run the binding tests against it.
#
# What this is: a separate CMake build of the CPU core (build/sanitize, SLIMGPT_SANITIZE=ON:
# -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer, -O0 and
# asserts on), imported from a throwaway venv in build/sanitize/venv whose only packages are a
# staged copy of slimgpt (symlinks to the sources, the instrumented _core) followed by the
# current environment's site-packages. The venv is needed because an editable install's
# import hook would load the normal build, also in the subprocesses the tests start. libasan
# (and libstdc++) is preloaded into the uninstrumented CPython, and leak detection is off (CPython keeps its
# memory until exit). Any ASan or UBSan report aborts the process, so it fails the run.
# What it is not: the CUDA path (SLIMGPT_CUDA=OFF here) or a substitute for the normal build.
#
# Usage: cpp/sanitize.sh [pytest arguments]
#   PYTHON  interpreter of an environment with nanobind, scipy-openblas32, numpy, scipy, pytest
#           and hypothesis (default: python); CXX the C++ compiler (default: c++)
#   no arguments: tests/test_core_bindings.py tests/test_core_fuzz.py; `-m fuzz` adds the long fuzz
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build/sanitize
PYTHON=${PYTHON:-python}
CXX=${CXX:-c++}

cmake -S "$root/cpp" -B "$build" -DSLIMGPT_SANITIZE=ON -DSLIMGPT_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_COMPILER="$CXX" -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
  -Dnanobind_DIR="$("$PYTHON" -m nanobind --cmake_dir)" $(command -v ninja >/dev/null && echo -GNinja) >/dev/null
cmake --build "$build"

# slimgpt staged from the sources, with the instrumented core
stage=$build/stage
rm -rf "$stage" && mkdir -p "$stage/slimgpt"
for f in "$root"/slimgpt/*; do
  case $f in *.so) ;; *) ln -s "$f" "$stage/slimgpt/" ;; esac
done
ln -sfn "$root/reference" "$stage/slimgpt/reference"  # -n: replace the link the loop made, not write into it
cp "$build"/_core*.so "$stage/slimgpt/"

# a venv that sees the staged slimgpt first, then this environment's packages (not its .pth hooks)
if [ ! -x "$build/venv/bin/python" ]; then "$PYTHON" -m venv --without-pip "$build/venv"; fi
site=$("$build/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PYTHON" -c "import sysconfig; print('$stage'); print(sysconfig.get_paths()['purelib']); print(sysconfig.get_paths()['platlib'])" \
  > "$site/slimgpt_sanitize.pth"

# run from the build folder: from the repository root, `python -m` would import ./slimgpt
cd "$build"
# libasan first; libstdc++ too, or ASan's __cxa_throw interceptor finds no real one (CPython
# itself does not link libstdc++) and aborts on the first C++ exception
export LD_PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:check_initialization_order=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc
if [ $# -eq 0 ]; then set -- "$root/tests/test_core_bindings.py" "$root/tests/test_core_fuzz.py"; fi
"$build/venv/bin/python" -c "import slimgpt._core as c; assert c.__file__.startswith('$stage'), c.__file__"
exec "$build/venv/bin/python" -m pytest -q -p no:cacheprovider -c "$root/pyproject.toml" --rootdir "$root" "$@"
