"""From a PyTorch classifier to a detector the Rust crate serves.

A torchvision-style network (features, global average pool, flatten, one
linear layer) is trained briefly on MNIST digits 0-4; a forward hook on its
pool takes the penultimate features; oodkit fits KNN and ViM on them (ViM
with the network's last layer), calibrates both at a 5 % false-alarm rate
on held-out in-distribution digits, reports how they separate the digits
0-4 from 5-9, and saves them. The network is then exported to ONNX and the
Rust command line scores the same test digits (written as PNG files)
through the exported network with the saved detector files: the scores
match the Python ones.

    python python/examples/pytorch_hook.py --data-dir ../shared/datasets \\
        --oodkit target/debug/oodkit

Needs torch (and onnx for the export); --oodkit names the command line
(`cargo build --features cli`), without it the Rust half is skipped.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import oodkit


def idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzip-compressed."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist(root: Path):
    d = root / "mnist"
    return (
        idx(d / "train-images-idx3-ubyte.gz"),
        idx(d / "train-labels-idx1-ubyte.gz"),
        idx(d / "t10k-images-idx3-ubyte.gz"),
        idx(d / "t10k-labels-idx1-ubyte.gz"),
    )


def network(torch):
    nn = torch.nn

    class Net(nn.Module):
        """torchvision's layout: features, avgpool, flatten, fc."""

        def __init__(self, classes: int = 5):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            )
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(128, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

    return Net()


def penultimate(path: Path) -> str:
    """The output the graph's last linear layer (Gemm) reads."""
    import onnx

    gemms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]
    return gemms[-1].input[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--oodkit", type=Path, help="the oodkit command line, for the Rust half")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--serve", type=int, default=300, help="test digits of each side scored by Rust")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    train_x, train_y, test_x, test_y = mnist(args.data_dir)
    to_tensor = lambda x: torch.from_numpy(x.astype(np.float32)[:, None] / 255.0)  # noqa: E731
    keep = train_y < 5
    x, y = to_tensor(train_x[keep]), torch.from_numpy(train_y[keep].astype(np.int64))
    model = network(torch)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            batch = order[i : i + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}")
    model.eval()

    # The penultimate features, from a forward hook on the pool.
    captured = []
    model.avgpool.register_forward_hook(lambda module, inputs, output: captured.append(torch.flatten(output, 1)))

    def features(images):
        captured.clear()
        with torch.no_grad():
            logits = torch.cat([model(images[i : i + 1000]) for i in range(0, len(images), 1000)])
        return torch.cat(captured).numpy(), logits.numpy()

    fit_features, _ = features(x)
    test_in, test_out = test_x[test_y < 5], test_x[test_y >= 5]
    calib, held = test_in[: len(test_in) // 2], test_in[len(test_in) // 2 :]
    calib_f, _ = features(to_tensor(calib))
    held_f, held_logits = features(to_tensor(held))
    out_f, out_logits = features(to_tensor(test_out))
    accuracy = (held_logits.argmax(1) == test_y[test_y < 5][len(test_in) // 2 :]).mean()
    print(f"test accuracy on digits 0-4: {accuracy:.4f}")
    head = (model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy())

    # The exported network names the hooked layer's output: the features are
    # given under that name, which the detector files record, so the Rust
    # side reads the same node of the ONNX graph.
    out_dir = Path(tempfile.mkdtemp(prefix="oodkit-pytorch-"))
    torch.onnx.export(model, (x[:2],), out_dir / "net.onnx", input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}}, dynamo=False)  # noqa: E501
    layer = penultimate(out_dir / "net.onnx")
    print(f"the hooked features are the ONNX graph's {layer!r}")
    named = lambda f: {layer: f}  # noqa: E731
    detectors = {
        "knn": oodkit.Knn(k=50, layers=[layer]).fit(named(fit_features), train_y[keep]),
        "vim": oodkit.Vim(dims=64, layers=[layer]).fit(named(fit_features), head=head),
    }
    for name, fitted in detectors.items():
        calibrated = fitted.calibrate(named(calib_f), head=head, alpha=0.05)
        detectors[name] = calibrated
        s_in, s_out = calibrated.score(named(held_f), head=head), calibrated.score(named(out_f), head=head)
        report = oodkit.metrics.bench_metrics(s_in, s_out, ["auroc", "fpr95tpr"])
        false_alarms = calibrated.decide(named(held_f), head=head).is_ood.mean()
        detected = calibrated.decide(named(out_f), head=head).is_ood.mean()
        print(
            f"{calibrated.kind:<4} AUROC {report['auroc']:.4f}, FPR@95 {report['fpr95tpr']:.4f}; at alpha 0.05: "
            f"{false_alarms:.3f} of held-out 0-4 flagged, {detected:.3f} of 5-9"
        )
        calibrated.save(out_dir / f"{name}.oodkit")
    print(f"detectors saved in {out_dir}")

    if args.oodkit is None:
        return
    # The Rust half: the exported network and the saved files score the
    # same digits, written as PNG files.
    from PIL import Image

    images = out_dir / "digits"
    images.mkdir()
    chosen = np.concatenate([held[: args.serve], test_out[: args.serve]])
    for i, img in enumerate(chosen):
        Image.fromarray(img).save(images / f"{i:05d}.png")
    served_f, _ = features(to_tensor(chosen))
    for name, calibrated in detectors.items():
        scores_file = out_dir / f"{name}-rust.npy"
        subprocess.run(
            [args.oodkit, "score", "--detector", out_dir / f"{name}.oodkit", "--data", images,
             "--model", out_dir / "net.onnx", "--channels", "grey", "--normalize", "unit", "--out", scores_file],
            check=True,
        )
        rust = np.load(scores_file)
        python = calibrated.score(named(served_f), head=head)
        worst = float(np.max(np.abs(rust - python) / np.maximum(np.abs(python), 1.0)))
        print(f"{calibrated.kind:<4} served by the Rust command line: largest relative difference {worst:.1e}")
        if worst > 1e-3:
            raise SystemExit(f"{name}: the Rust scores differ from Python's by {worst:.1e}")


if __name__ == "__main__":
    main()
