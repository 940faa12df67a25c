#!/usr/bin/env python3
"""Keras 3 on JAX (XLA, CPU) reference for `cargo xtask bench --peer keras`.

The same models as fmnist-models (cnn, lstm, mlp, cnn-deep, resnet: same layers, same order,
same parameter counts; images channels-last, as Keras wants them), the same study recipe (Adam
1e-3, batch 256, pixels scaled to [0, 1]) and the same measurement as `fmnist-bench`: a few
untimed warm-up steps (which also compile the XLA programs), a fixed number of timed training
steps (batch assembly included), then inference over the 10,000 test images in chunks of 1,000,
after one untimed chunk that compiles the inference program. Prints one JSON line with the
fields of fmnist-bench.

Needs keras, jax and numpy (`pip install keras "jax[cpu]" numpy`; see docs/speed.md).
"""
import os
import sys
import time

from reference import arguments, load, print_result, time_steps


def build(kind, keras):
    L = keras.layers
    if kind == "cnn":
        layers = [
            L.Conv2D(32, 3), L.MaxPooling2D(2), L.ReLU(),
            L.Conv2D(32, 3), L.MaxPooling2D(2), L.ReLU(),
            L.Flatten(), L.Dense(100, activation="relu"), L.Dense(10),
        ]
    elif kind == "mlp":
        layers = [
            L.Flatten(), L.Dense(256, activation="relu"), L.Dropout(0.2),
            L.Dense(128, activation="relu"), L.Dropout(0.2), L.Dense(10),
        ]
    elif kind == "lstm":
        # The 28 rows are the 28 steps of 28 features.
        layers = [L.Reshape((28, 28)), L.LSTM(128), L.Dense(10)]
    elif kind == "cnn-deep":
        layers = [
            *conv_bn_relu(L, 32), L.MaxPooling2D(2), L.Dropout(0.25),
            *conv_bn_relu(L, 64), L.MaxPooling2D(2), L.Dropout(0.25),
            *conv_bn_relu(L, 128), *conv_bn_relu(L, 128), L.MaxPooling2D(2), L.Dropout(0.25),
            L.Flatten(), L.Dense(256, activation="relu"), L.Dropout(0.5), L.Dense(10),
        ]
    elif kind == "resnet":
        x = inputs = keras.Input((28, 28, 1))
        for layer in [*conv_bn_relu(L, 32), L.MaxPooling2D(2)]:
            x = layer(x)
        for width in (32, 64, 128):
            x = residual_block(L, x, width)
        x = L.Dense(10)(L.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, x)
    else:
        sys.exit(
            f"error: no Keras reference for model {kind} (have cnn, lstm, mlp, cnn-deep, resnet)"
        )
    return keras.Sequential([keras.Input((28, 28, 1))] + layers)


def batch_norm(L):
    """BatchNorm with PyTorch's (and fmnist-models') momentum and epsilon."""
    return L.BatchNormalization(momentum=0.9, epsilon=1e-5)


def conv_bn_relu(L, width, strides=1):
    """3x3 convolution ("same" padding, no bias), BatchNorm, ReLU: fmnist-models' ConvBn + ReLU."""
    return [L.Conv2D(width, 3, strides, padding="same", use_bias=False), batch_norm(L), L.ReLU()]


def residual_block(L, x, width):
    """fmnist-models' residual block: conv-BN-ReLU, conv-BN, plus the input (or, when the
    width changes, a strided 1x1 conv-BN of it), then ReLU."""
    strides = 1 if x.shape[-1] == width else 2
    y = x
    for layer in conv_bn_relu(L, width, strides):
        y = layer(y)
    y = batch_norm(L)(L.Conv2D(width, 3, padding="same", use_bias=False)(y))
    skip = x if strides == 1 else batch_norm(L)(L.Conv2D(width, 1, strides, use_bias=False)(x))
    return L.ReLU()(L.Add()([y, skip]))


def main():
    p = arguments(__doc__.splitlines()[0])
    a = p.parse_args()
    if a.warmup < 1:
        sys.exit("error: --warmup must be at least 1 (the first step compiles)")

    # XLA's CPU thread pool takes its size from here; it must be set before jax loads.
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault(
        "XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={a.threads}"
    )
    import jax
    import keras
    import numpy as np

    keras.utils.set_random_seed(a.seed)
    (train_x, train_y, test_x, test_y), load_seconds = load(a.data_dir)

    model = build(a.model, keras)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(42)
    order = rng.permutation(48_000)

    def batch(i):
        idx = order[(i * a.batch_size) % 48_000 :][: a.batch_size]
        x = (train_x[idx].astype(np.float32) / 255.0)[..., None]
        return x, train_y[idx].astype(np.int32)

    def step(i):
        x, y = batch(i)
        # train_on_batch returns the loss as a host float: the step has finished.
        return model.train_on_batch(x, y)

    rate = time_steps(step, a.warmup, a.batches, a.batch_size)

    def chunk(i):
        return (test_x[i : i + 1000].astype(np.float32) / 255.0)[..., None]

    model.predict_on_batch(chunk(0))
    start = time.perf_counter()
    correct = 0
    for i in range(0, len(test_x), 1000):
        pred = np.asarray(model.predict_on_batch(chunk(i))).argmax(1)
        correct += int((pred == test_y[i : i + 1000]).sum())
    infer = time.perf_counter() - start

    print_result(
        a, f"keras-{keras.__version__}-jax-{jax.__version__}", a.threads, rate, len(test_x) / infer, correct / len(test_x), load_seconds
    )


if __name__ == "__main__":
    main()
