#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU: the CUDA-parametrised tests,
# then the epoch-time benchmark with every model on the GPU.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [NODES] [EXTRA epoch_time.py ARGS ...]
#
# e.g. papers100M's batch density on 6M nodes within about 5 minutes:
#   bash benchmarks/gpu_check.sh OUT 6000000 --batch-size 128 --max-batches 16 --loader-batches 6
#
# Uses the python3 on PATH (it must have a CUDA build of torch and this
# project's dependencies importable). Writes OUT_DIR/cuda_tests.log,
# OUT_DIR/epoch_time_cuda.{json,md} and OUT_DIR/memory_access_cuda.{json,md}
# (none/raw/refresh at 10 % and the PyG-style baseline, small graphs). The benchmark's store is generated under
# ${TMPDIR:-/tmp}, never in the checkout.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [NODES]}
nodes=${2:-4000000}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 - <<'PY'
import numba, numpy, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
print("numpy", numpy.__version__, "numba", numba.__version__)
PY
echo "== CUDA tests"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -k cuda tests 2>&1 | tee "$out/cuda_tests.log" | tail -25
echo "== epoch time on the GPU ($nodes nodes)"
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/epoch_time.py --device cuda --nodes "$nodes" \
    --data-dir "${TMPDIR:-/tmp}/refresh_epoch_time" --epochs 2 --repeats 2 --loader-batches 8 \
    --out "$out/epoch_time_cuda.json" "$@" 2>&1 | tail -45
echo "== memory access and epoch time, none/raw/refresh, on the GPU (quick)"
timeout "${MA_TIMEOUT:-240}" python3 benchmarks/memory_access.py --quick --device cuda \
    --data-dir "${TMPDIR:-/tmp}/refresh_memory_access" --out "$out/memory_access_cuda.json" 2>&1 | tail -40
