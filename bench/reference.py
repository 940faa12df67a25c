"""What the reference scripts share: reading the IDX files (gzipped or not), loading the four
of them, and timing training steps the way fmnist-bench does."""
import argparse
import gzip
import json
import os
import resource
import struct
import sys
import time


def read_idx(path):
    import numpy as np

    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    sys.exit(f"error: {stem}(.gz) not found in {data_dir}")


def arguments(description):
    """The flags every reference script takes, as fmnist-bench names them."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    return p


def load(data_dir):
    """The training and test images and labels, and the seconds it took to read them."""
    start = time.perf_counter()
    sets = [
        read_idx(find(data_dir, stem))
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    ]
    return sets, time.perf_counter() - start


def time_steps(step, warmup, batches, batch_size, sync=None):
    """Runs step(i) for `warmup` untimed steps, then `batches` timed ones; the training
    images per second of the timed ones. Without `sync` each step must have finished when it
    returns; with it (a GPU), the steps are queued back to back and sync() waits for the last,
    as fmnist-bench reads only the last step's loss."""
    for i in range(warmup):
        step(i)
    if sync is not None:
        sync()
        t = time.perf_counter()
        for i in range(warmup, warmup + batches):
            step(i)
        sync()
        return batches * batch_size / (time.perf_counter() - t)
    timed = 0.0
    for i in range(warmup, warmup + batches):
        t = time.perf_counter()
        step(i)
        timed += time.perf_counter() - t
    return batches * batch_size / timed


def print_result(a, implementation, threads, train_rate, infer_rate, accuracy, load_seconds):
    """The one JSON line of fmnist-bench's fields that `cargo xtask bench` reads."""
    print(json.dumps({
        "implementation": implementation,
        "model": a.model,
        "threads": threads,
        "batch_size": a.batch_size,
        "batches": a.batches,
        "train_images_per_s": train_rate,
        "epoch_seconds": 48_000 / train_rate,
        "infer_images_per_s": infer_rate,
        "test_accuracy": accuracy,
        "data_load_seconds": load_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))
