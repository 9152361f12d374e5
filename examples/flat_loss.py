"""A provably flat region of the loss landscape: the loss bounded while a layer's weights vary.

    pip install -e ".[examples]"          # scikit-learn, for its built-in digits (no download)
    python examples/flat_loss.py [--out DIR]

An MLP is trained normally on scikit-learn's digits and bounded in float64. Then, for growing radii r, the weights and
biases of one layer vary in the box of radius r around their trained values (every weight on its
own), and `BoundedModule.robust_loss(..., weights=...)` bounds the cross-entropy of every test
image over all those weights at once (CROWN; the loss is part of the bounded graph). The mean
of those bounds is a guarantee: no weights in the box give a larger mean test loss. Beside it, the
largest mean loss found among random corners of the box (a lower estimate of the true maximum),
for the first and for the last layer. The curves go to DIR/flat_loss.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import verifier

RADII = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install -e \".[examples]\"") from None
    digits = sklearn_digits()
    images = torch.from_numpy(digits.data / 16.0).float()
    train_x, test_x, train_y, test_y = train_test_split(images, torch.from_numpy(digits.target).long(),
                                                        test_size=0.2, random_state=0, stratify=digits.target)
    return train_x, train_y, test_x, test_y


def trained_mlp(x: Tensor, y: Tensor, epochs: int = 60) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(x), 64):
            loss = F.cross_entropy(model(x[start:start + 64]), y[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def sampled_worst(model: nn.Module, names: list[str], radius: float, x: Tensor, y: Tensor, draws: int = 200) -> float:
    """The largest mean loss over random corners of the weights' box."""
    generator = torch.Generator().manual_seed(1)
    centre = dict(model.named_parameters())
    worst = 0.0
    with torch.no_grad():
        for _ in range(draws):
            values = {name: centre[name] + radius * torch.sign(torch.rand(centre[name].shape, generator=generator)
                                                                - 0.5) for name in names}
            worst = max(worst, float(F.cross_entropy(torch.func.functional_call(model, values, (x,)), y)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/flat_loss"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = load_digits()
    # bounded in float64: the allowances for float32 rounding (about 2e-4 of the summed terms per
    # sweep) would otherwise dominate the smallest radii, and exp overflows float32 above 88
    model = trained_mlp(train_x, train_y).double()
    test_x = test_x.double()
    with torch.no_grad():
        accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    print(f"MLP 64-64-32-10 trained on the digits: test accuracy {accuracy:.3f}")
    net = verifier.BoundedModule(model, test_x[:1])
    layers = {"first layer": ["0.weight", "0.bias"], "last layer": ["4.weight", "4.bias"]}
    curves = {}
    print(f"{'layer':12} {'radius':>8} {'bound':>9} {'sampled':>9}   mean test cross-entropy over the box")
    for label, names in layers.items():
        curves[label] = []
        for radius in RADII:
            with torch.no_grad():
                bound = float(net.robust_loss(test_x, test_y, eps=0.0, weights=dict.fromkeys(names, radius),
                                              method="crown").mean())
            found = sampled_worst(model, names, radius, test_x, test_y)
            curves[label].append((radius, bound, found))
            print(f"{label:12} {radius:8.4f} {bound:9.4f} {found:9.4f}", flush=True)
            if found > bound + 1e-4:
                raise SystemExit(f"a sampled loss {found} exceeds the bound {bound}: a soundness bug")
    plot(curves, args.out / "flat_loss.png")
    print(f"plot: {args.out / 'flat_loss.png'}")


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for (label, rows), colour in zip(curves.items(), ("tab:blue", "tab:orange")):
        radii = [r for r, _, _ in rows]
        axis.plot(radii, [b for _, b, _ in rows], "-o", color=colour, label=f"{label}: certified bound")
        axis.plot(radii, [f for _, _, f in rows], "--x", color=colour, label=f"{label}: worst sampled")
    axis.set_xlabel("radius of the weights' box (each weight, L-inf)")
    axis.set_ylabel("mean test cross-entropy")
    axis.set_yscale("log")
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
