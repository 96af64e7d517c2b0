#!/usr/bin/env bash
# The GPU check of the CUDA-graph device step (about 2 minutes on an H200), from the
# repository root with MNIST under $GPUBACKPROP_DATA/mnist:
#
#     bash benchmarks/cuda_graphs_check.sh OUT_DIR
#
# 1. which compiler takes the reference MLP, and whether it records a CUDA graph;
# 2. the gpu tests of tests/test_cuda_graphs.py (replayed graphs vs the uncaptured step,
#    capture refusals, the switch, the capture GEMM against CuPy's product);
# 3. the MLP bench with graphs (OUT_DIR/graphs, beside the GEMMs alone and PyTorch) and
#    without (OUT_DIR/no-graphs, GEMMs alone), 3 epochs each.
set -uo pipefail
out="${1:?usage: bash benchmarks/cuda_graphs_check.sh OUT_DIR}"
mkdir -p "$out"
export PYTHONPATH=.
status=0
python3 -m gpubackprop info 2>&1 | tee "$out/info.txt" || status=1
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_graphs.py \
    --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.txt" || status=1
bench() {  # bench MODE SWITCH RUNNERS
    GPUBACKPROP_CUDA_GRAPHS=$2 timeout 300 python3 -m gpubackprop bench --device gpu \
        --epochs 3 --models 784-128-10,784-512-10 --runners "$3" \
        --out "$out/$1" 2>&1 | tee "$out/$1.txt" || status=1
}
bench graphs 1 ours,gemm,torch
bench no-graphs 0 ours,gemm
exit $status
