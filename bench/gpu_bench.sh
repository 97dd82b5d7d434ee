#!/usr/bin/env bash
# Run the CUDA variants of `vlit-ros bench` in one go and write one JSON per variant, plus a
# markdown summary (bench/bench_table.py).
#
#   bash bench/gpu_bench.sh [OUT_DIR]
#
# OUT_DIR defaults to $OUT (the device machine's result folder) or bench/results_gpu.
# Variants: fp32 eager, bf16 autocast eager, bf16 + torch.compile, bf16 + CUDA graph,
# bf16 + torch.compile + CUDA graph; each at batch 1 and batch 64. PYTHON selects the
# interpreter (default: .venv/bin/python if present, else python3); it needs a CUDA build of
# torch. ITERATIONS and WARMUP override the per-stage counts (default 300 and 50).
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=${1:-${OUT:-bench/results_gpu}}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
iterations=${ITERATIONS:-300}
warmup=${WARMUP:-50}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_bench.sh: $PYTHON has no usable CUDA (torch $("$PYTHON" -c \
'import torch; print(torch.__version__)')); install a CUDA build of torch" >&2
    exit 2
fi
mkdir -p "$out_dir"
"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

run() {
    local name=$1
    shift
    echo "== $name"
    "$PYTHON" -m vlit_ros.cli bench --device cuda --batch 64 --iterations "$iterations" \
        --warmup "$warmup" --json "$out_dir/$name.json" "$@"
}

run cuda_fp32 --precision fp32
run cuda_bf16 --precision bf16
run cuda_bf16_compile --precision bf16 --compile
run cuda_bf16_graph --precision bf16 --cuda-graph
run cuda_bf16_compile_graph --precision bf16 --compile --cuda-graph

"$PYTHON" bench/bench_table.py "$out_dir"/cuda_*.json | tee "$out_dir/summary.md"
