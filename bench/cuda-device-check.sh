#!/usr/bin/env bash
# The GPU checks, in one run on a machine with an NVIDIA GPU and no Rust toolchain, from
# binaries built elsewhere with `cargo xtask cuda-check` (docs/gpu.md):
#   1. the agreement tests of every CUDA kernel against candle's generic path and the CPU
#      (forward and gradients), from the test binaries in $FMNIST_GPU_BIN;
#   2. the study recipe on CUDA over seeds 42-44 (`fmnist-train`), for its accuracy beside
#      the CPU's committed runs;
#   3. one `fmnist-bench --count-ops always` under a watchdog: it prints a step's tensor
#      operations, or, if it hangs, the threads' backtraces (cuda-gdb);
#   4. `xtask bench --device cuda --peer pytorch`: candle with these kernels, candle's generic
#      CUDA path and PyTorch eager on the same GPU, interleaved, into
#      $FMNIST_GPU_RESULTS/BENCH-cuda.md (written after every repeat, and stopped after
#      $FMNIST_GPU_BENCH_SECONDS so that a hang cannot take the whole lease).
# Needs: $FMNIST_GPU_BIN holding fmnist-bench, fmnist-train, xtask and the test binaries
# (fmnist_models-*, fmnist_train-*), $FMNIST_DATA_DIR holding the four IDX files, and python3
# with torch. Run from the repository's root (the bench reads bench/pytorch_ref.py).
set -uo pipefail
BIN=${FMNIST_GPU_BIN:?folder of the carried binaries}
RESULTS=${FMNIST_GPU_RESULTS:-results}
MODELS=${FMNIST_GPU_MODELS:-cnn,lstm,cnn-deep,resnet}
REPEATS=${FMNIST_GPU_REPEATS:-5}
: "${FMNIST_DATA_DIR:?folder of the Fashion-MNIST IDX files}"
export FMNIST_DATA_DIR

# The CUDA 13 libraries (cuBLAS, cuRAND, NVRTC) from the Python packages that ship them,
# next to the driver's.
libs=$(python3 - <<'PY'
import importlib.util, os
dirs = set()
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations or []) if spec else []:
    for d, _, files in os.walk(root):
        if any(f.startswith(("libcublas", "libcurand", "libnvrtc", "libcudart")) for f in files):
            dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${libs}:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
echo "== agreement tests ($SECONDS s)"
for t in "$BIN"/fmnist_models-* "$BIN"/fmnist_train-*; do
    [ -x "$t" ] || continue
    echo "-- $(basename "$t")"
    "$t" --test-threads 1 cuda || status=1
done

echo "== study recipe on CUDA, seeds 42-44, accuracy beside the CPU's ($SECONDS s)"
for m in ${FMNIST_GPU_STUDY:-cnn lstm}; do
    "$BIN"/fmnist-train --model "$m" --preset study --device cuda --seeds 42,43,44 \
        --out "/tmp/fmnist-gpu-runs/$m" 2>&1 | grep -E "test acc|mean|error" || status=1
done

echo "== operations per step, under a 30 s watchdog ($SECONDS s)"
"$BIN"/fmnist-bench --model cnn --device cuda --count-ops always --warmup 1 --batches 2 \
    > /tmp/fmnist-count.out 2>&1 &
pid=$!
for _ in $(seq 30); do sleep 1; kill -0 $pid 2>/dev/null || break; done
if kill -0 $pid 2>/dev/null; then
    echo "fmnist-bench --count-ops always still running after 30 s; its threads:"
    timeout 60 cuda-gdb -p $pid -batch -ex "thread apply all bt 40" 2>&1 \
        | grep -E "^#|^Thread" | cut -c1-240 | head -120
    kill -9 $pid
    status=1
fi
tail -c 2000 /tmp/fmnist-count.out

echo "== benchmark ($SECONDS s)"
mkdir -p "$RESULTS"
timeout "${FMNIST_GPU_BENCH_SECONDS:-420}" "$BIN"/xtask bench --bin-dir "$BIN" --device cuda \
    --models "$MODELS" --kernels fused,generic --peer pytorch --python python3 --measure-timeout 120 \
    --repeats "$REPEATS" --threads 16 --results "$RESULTS" || status=1
echo "== done ($SECONDS s)"
exit $status
