#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench --peer pytorch`.

The same models as fmnist-models (cnn, lstm, mlp, cnn-wide, cnn-deep, resnet: same layers, same
order, same parameter counts), the same study recipe (Adam 1e-3, batch 256, pixels scaled to
[0, 1]) and the same measurement as `fmnist-bench`: a few untimed warm-up steps, a fixed number
of timed training steps (batch assembly included), then inference over the 10,000 test images
in chunks of 1,000 under torch.no_grad(). Prints one JSON line with the fields of fmnist-bench.

With `--epochs N` it trains the study recipe instead (a seeded random 80/20 split, N epochs,
reshuffled each epoch) and prints one JSON line with each epoch's validation accuracy and the
test accuracy of the best epoch on validation: the accuracy PyTorch reaches with the recipe,
to set beside `fmnist-train --preset study`.

Needs torch and numpy (`pip install torch numpy`; see the README, "Benchmarks").
"""
import json
import os
import sys
import time

from reference import arguments, load, print_result, time_steps


def build(kind, nn):
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(800, 100), nn.ReLU(), nn.Linear(100, 10),
        )
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10),
        )
    if kind == "lstm":
        class Lstm(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(28, 128, batch_first=True)
                self.fc = nn.Linear(128, 10)

            def forward(self, x):
                _, (h, _) = self.lstm(x.squeeze(1))
                return self.fc(h[-1])

        return Lstm()
    if kind == "cnn-wide":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 10),
        )
    if kind == "cnn-deep":
        return nn.Sequential(
            *conv_bn_relu(nn, 1, 32), nn.MaxPool2d(2), nn.Dropout(0.25),
            *conv_bn_relu(nn, 32, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
            *conv_bn_relu(nn, 64, 128), *conv_bn_relu(nn, 128, 128), nn.MaxPool2d(2),
            nn.Dropout(0.25), nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(256, 10),
        )
    if kind == "resnet":
        return nn.Sequential(
            *conv_bn_relu(nn, 1, 32), nn.MaxPool2d(2),
            residual_block(nn, 32, 32), residual_block(nn, 32, 64), residual_block(nn, 64, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
        )
    sys.exit(
        f"error: no PyTorch reference for model {kind} "
        "(have cnn, lstm, mlp, cnn-wide, cnn-deep, resnet)"
    )


def conv_bn_relu(nn, inputs, outputs):
    """3x3 convolution (padding 1, no bias), BatchNorm, ReLU: fmnist-models' ConvBn + ReLU."""
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]


def residual_block(nn, inputs, outputs):
    """fmnist-models' residual block: conv-BN-ReLU, conv-BN, plus the input (or, when the
    width changes, a strided 1x1 conv-BN of it), then ReLU. The first convolution has
    stride 2 where the width changes."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            stride = 1 if inputs == outputs else 2
            self.a = nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(outputs), nn.ReLU(),
            )
            self.b = nn.Sequential(
                nn.Conv2d(outputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs)
            )
            self.down = None if stride == 1 else nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=2, bias=False), nn.BatchNorm2d(outputs)
            )

        def forward(self, x):
            skip = x if self.down is None else self.down(x)
            return (self.b(self.a(x)) + skip).relu()

    return Block()


def keras_init(model, nn):
    """Keras' defaults, as `fmnist-train --init keras`: Glorot-uniform kernels, zero biases;
    the LSTM's (4 x hidden, hidden) recurrent matrix orthogonal and its forget-gate bias 1."""
    import torch

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTM):
            hidden = m.hidden_size
            # Keras draws the (input, 4 x hidden) kernel as one Glorot matrix.
            bound = (6.0 / (m.input_size + 4 * hidden)) ** 0.5
            nn.init.uniform_(m.weight_ih_l0, -bound, bound)
            nn.init.orthogonal_(m.weight_hh_l0)
            nn.init.zeros_(m.bias_ih_l0)
            nn.init.zeros_(m.bias_hh_l0)
            with torch.no_grad():
                m.bias_ih_l0[hidden : 2 * hidden] = 1.0  # gates i, f, g, o


def images(x):
    """uint8 images [N, 28, 28] as a float tensor [N, 1, 28, 28] in [0, 1], on the host."""
    import numpy as np
    import torch

    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)


def main():
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, help="train the study recipe for this many epochs")
    p.add_argument("--init", choices=["pytorch", "keras"], default="pytorch",
                   help="initial weights: PyTorch's defaults or Keras' (as fmnist-train --init)")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (eager, cuDNN; on a GPU the training images stay on the "
                        "device and each batch is gathered there, as fmnist-bench does)")
    a = p.parse_args()

    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    (train_x, train_y, test_x, test_y), load_seconds = load(a.data_dir)

    model = build(a.model, nn)
    if a.init == "keras":
        keras_init(model, nn)
    device = torch.device(a.device)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    if a.epochs:
        return study(a, model, opt, loss_fn, (train_x, train_y, test_x, test_y), device)
    rng = np.random.default_rng(42)
    order = rng.permutation(48_000)

    on_gpu = device.type == "cuda"
    if on_gpu:
        # As fmnist-bench on a GPU: the training images normalized once and kept on the
        # device, each batch gathered there by its indices.
        resident_x = images(train_x[:48_000]).to(device)
        resident_y = torch.from_numpy(train_y[:48_000].astype(np.int64)).to(device)

    def batch(i):
        idx = order[(i * a.batch_size) % 48_000 :][: a.batch_size]
        if on_gpu:
            at = torch.from_numpy(idx).to(device)
            return resident_x[at], resident_y[at]
        return images(train_x[idx]), torch.from_numpy(train_y[idx].astype(np.int64))

    def step(i):
        x, y = batch(i)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        # On a GPU the steps queue up and the timer waits once for the last.
        return loss if on_gpu else loss.item()

    model.train()
    sync = torch.cuda.synchronize if on_gpu else None
    rate = time_steps(step, a.warmup, a.batches, a.batch_size, sync)

    model.eval()
    start = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_x), 1000):
            pred = model(images(test_x[i : i + 1000]).to(device)).argmax(1).cpu().numpy()
            correct += int((pred == test_y[i : i + 1000]).sum())
    infer = time.perf_counter() - start

    name = f"pytorch-{torch.__version__}" + ("-cuda" if on_gpu else "")
    print_result(
        a, name, torch.get_num_threads(), rate, len(test_x) / infer, correct / len(test_x), load_seconds
    )


def study(a, model, opt, loss_fn, data, device):
    import numpy as np
    import torch

    train_x, train_y, test_x, test_y = data
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(train_x))
    n_val = len(train_x) // 5
    val_idx, fit_idx = perm[:n_val], perm[n_val:]

    def accuracy(x, y):
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x), 1000):
                pred = model(images(x[i : i + 1000]).to(device)).argmax(1).cpu().numpy()
                correct += int((pred == y[i : i + 1000]).sum())
        return correct / len(x)

    history, best = [], (-1.0, 0, 0.0)
    start = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        model.train()
        order = rng.permutation(fit_idx)
        for i in range(0, len(order), a.batch_size):
            idx = order[i : i + a.batch_size]
            x = images(train_x[idx]).to(device)
            y = torch.from_numpy(train_y[idx].astype(np.int64)).to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        val = accuracy(train_x[val_idx], train_y[val_idx])
        history.append(val)
        if val > best[0]:
            best = (val, epoch, accuracy(test_x, test_y))
    print(json.dumps({
        "implementation": f"pytorch-{torch.__version__}",
        "model": a.model,
        "seed": a.seed,
        "init": a.init,
        "epochs": a.epochs,
        "val_accuracy": history,
        "best_epoch": best[1],
        "test_accuracy": best[2],
        "train_seconds": time.perf_counter() - start,
    }))


if __name__ == "__main__":
    main()
