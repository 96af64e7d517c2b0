#!/usr/bin/env bash
# The GPU check of the recorded eager step (recurrent models; under 2 minutes on an H200),
# from the repository root with MNIST under $GPUBACKPROP_DATA/mnist:
#
#     bash benchmarks/eager_graphs_check.sh OUT_DIR
#
# 1. the gpu tests of tests/test_cuda_graphs_eager.py (recorded RNN/LSTM/GRU steps train as
#    the unrecorded eager step; new batches and data; three batch shapes; the switch; no
#    capture GEMM) and tests/test_cuda_graphs.py (the MLP's device step, unchanged);
# 2. the RNN and LSTM benches with graphs (OUT_DIR/graphs, beside PyTorch), 3 epochs;
#    bench.md names the step's compiler. With NO_GRAPHS=1 also the RNN's without
#    (OUT_DIR/no-graphs; about 15 s more on an H200).
set -uo pipefail
out="${1:?usage: bash benchmarks/eager_graphs_check.sh OUT_DIR}"
mkdir -p "$out"
export PYTHONPATH=.
status=0
GPUBACKPROP_CUDA_GRAPHS=all timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_graphs_eager.py \
    tests/test_cuda_graphs.py --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.txt" \
    || status=1
bench() {  # bench MODE SWITCH RUNNERS MODELS
    GPUBACKPROP_CUDA_GRAPHS=$2 timeout 300 python3 -m gpubackprop bench --device gpu \
        --epochs 3 --models "$4" --runners "$3" \
        --out "$out/$1" 2>&1 | tee "$out/$1.txt" || status=1
}
bench graphs all ours,torch rnn-28x28-128-10,lstm-28x28-128-10
if [ "${NO_GRAPHS:-0}" = 1 ]; then bench no-graphs 0 ours rnn-28x28-128-10; fi
exit $status
