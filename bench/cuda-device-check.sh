#!/usr/bin/env bash
# The GPU checks, in one run on a machine with an NVIDIA GPU and no Rust toolchain, from
# binaries built elsewhere with `cargo xtask cuda-check` (docs/gpu.md), most important first
# so that a run cut short by its lease keeps what matters:
#   1. the agreement tests of every CUDA kernel against candle's generic path and the CPU
#      (forward and gradients), from the test binaries in $FMNIST_GPU_BIN;
#   2. one short `fmnist-bench` per kernel set under a 30 s watchdog: its JSON line, or, if it
#      hangs, the threads' backtraces (cuda-gdb);
#   3. `xtask bench --device cuda --peer pytorch`: candle with these kernels, candle's generic
#      CUDA path and PyTorch eager on the same GPU, interleaved, into
#      $FMNIST_GPU_RESULTS/BENCH-cuda.md (written after every repeat, and stopped after
#      $FMNIST_GPU_BENCH_SECONDS so that a hang cannot take the whole lease);
#   4. the study recipe on CUDA ($FMNIST_GPU_STUDY models, seeds $FMNIST_GPU_SEEDS), for its
#      accuracy beside the CPU's committed runs (an empty list skips it);
#   5. with FMNIST_GPU_COUNT_OPS=1, a step's tensor operations (`--count-ops always`) under
#      the same watchdog.
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

# Runs a command in the background for at most 30 s; past that, prints every thread's
# backtrace and kills it. Prints the tail of its output either way.
watchdog() {
    local out=/tmp/fmnist-watchdog.out
    "$@" > "$out" 2>&1 &
    local pid=$!
    for _ in $(seq 30); do sleep 1; kill -0 $pid 2>/dev/null || break; done
    if kill -0 $pid 2>/dev/null; then
        echo "still running after 30 s: $*; its threads:"
        timeout 60 cuda-gdb -p $pid -batch -ex "thread apply all bt 40" 2>&1 \
            | grep -E "^#|^Thread" | cut -c1-240 | head -120
        kill -9 $pid
        status=1
    fi
    tail -c 2000 "$out"
}

echo "== one short fmnist-bench per kernel set, under a 30 s watchdog ($SECONDS s)"
for k in fused generic; do
    watchdog "$BIN"/fmnist-bench --model cnn --device cuda --kernels $k --warmup 2 --batches 20
done

echo "== benchmark ($SECONDS s)"
mkdir -p "$RESULTS"
timeout "${FMNIST_GPU_BENCH_SECONDS:-420}" "$BIN"/xtask bench --bin-dir "$BIN" --device cuda \
    --models "$MODELS" --kernels fused,generic --peer pytorch --python python3 --measure-timeout 120 \
    --repeats "$REPEATS" --threads 16 --results "$RESULTS" || status=1

echo "== study recipe on CUDA, accuracy beside the CPU's ($SECONDS s)"
for m in ${FMNIST_GPU_STUDY-cnn lstm}; do
    "$BIN"/fmnist-train --model "$m" --preset study --device cuda --seeds "${FMNIST_GPU_SEEDS:-42,43,44}" \
        --out "/tmp/fmnist-gpu-runs/$m" 2>&1 | grep -E "test acc|mean|error" || status=1
done

if [ "${FMNIST_GPU_COUNT_OPS:-0}" = 1 ]; then
    echo "== operations per step ($SECONDS s)"
    watchdog "$BIN"/fmnist-bench --model cnn --device cuda --count-ops always --warmup 1 --batches 2
fi
echo "== done ($SECONDS s)"
exit $status
