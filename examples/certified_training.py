"""Certified training with the library, on scikit-learn's digits, against the same CNN trained normally.

    pip install -e ".[examples]"          # scikit-learn, for its built-in digits (no download)
    python examples/certified_training.py [--epochs 30] [--eps 0.1] [--verify 100] [--out DIR]

The digits are 1,797 8x8 images (pixel values 0-16, scaled to [0, 1]); 20 % are held out. Both
models are the same small CNN. The certified one minimises the robust cross-entropy: the loss of
the lower bounds of the margins z_y - z_j over the L-inf ball of radius eps (clipped to the pixel
range), computed by `verifier.BoundedModule` with a mix of IBP and CROWN-IBP bounds, with eps
ramped up from 0 as in the CROWN-IBP paper (Zhang et al., ICLR 2020). Reported on the test split:
clean accuracy, PGD accuracy (an upper bound of the robust accuracy), and verified accuracy, the
last decided by the project's own complete verifier (`verify`: attack, CROWN, alpha-CROWN, branch
and bound) on the first `--verify` test images, each exported to ONNX and VNN-LIB. The training
curves go to DIR/training.png.
"""

from __future__ import annotations

import argparse
import io
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import verifier
from verifier.deadline import Deadline
from verifier.settings import family_settings
from verifier.verify import verify_instance


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install -e \".[examples]\"") from None
    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(images, digits.target, test_size=0.2, random_state=0,
                                                        stratify=digits.target)
    return (torch.from_numpy(train_x), torch.from_numpy(train_y).long(), torch.from_numpy(test_x),
            torch.from_numpy(test_y).long())


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def margin_rows(labels: Tensor, classes: int = 10) -> Tensor:
    """C [B, classes, classes] with rows e_y - e_j: C @ z is the margin of the label over each class."""
    eye = torch.eye(classes)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def robust_loss(net: verifier.BoundedModule, x: Tensor, labels: Tensor, eps: float,
                beta: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the margins' lower bounds (IBP mixed with CROWN-IBP by `beta`), and which
    samples those bounds verify."""
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    rows = margin_rows(labels)
    margins = net.compute_bounds(lower=lower, upper=upper, C=rows, method="ibp")[0]
    if beta > 0:
        crown_ibp = net.compute_bounds(lower=lower, upper=upper, C=rows, method="crown-ibp")[0]
        margins = beta * crown_ibp + (1 - beta) * margins
    return F.cross_entropy(-margins, labels), (margins.detach() >= 0).all(1)


def train(model: nn.Module, data: tuple[Tensor, Tensor], certified: bool, epochs: int, eps: float,
          log: list[dict]) -> None:
    x, y = data
    net = verifier.BoundedModule(model, x[:1])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    warmup, ramp = max(1, epochs // 10), max(1, epochs // 2)
    for epoch in range(epochs):
        started = time.perf_counter()
        progress = min(1.0, max(0.0, (epoch - warmup + 1) / ramp))  # 0 during warm-up, 1 after the ramp
        epoch_eps, kappa, beta = (eps * progress if certified else 0.0), 1 - 0.5 * progress, 1 - progress
        order = torch.randperm(len(x), generator=generator)
        totals = {"loss": 0.0, "correct": 0, "verified": 0}
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            logits = model(x[batch])
            loss = F.cross_entropy(logits, y[batch])
            if certified and epoch_eps > 0:
                robust, verified = robust_loss(net, x[batch], y[batch], epoch_eps, beta)
                loss = kappa * loss + (1 - kappa) * robust
                totals["verified"] += int(verified.sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals["loss"] += float(loss.detach()) * len(batch)
            totals["correct"] += int((logits.argmax(1) == y[batch]).sum())
        row = {"model": "certified" if certified else "normal", "epoch": epoch + 1, "eps": epoch_eps,
               "loss": totals["loss"] / len(x), "clean": totals["correct"] / len(x),
               "verified": totals["verified"] / len(x) if certified and epoch_eps > 0 else float("nan")}
        log.append(row)
        print(f"  {row['model']:9} epoch {row['epoch']:3}/{epochs}  eps {epoch_eps:.3f}  loss {row['loss']:.3f}  "
              f"train clean {row['clean']:.3f}  train verified {row['verified']:.3f}  "
              f"{time.perf_counter() - started:.1f}s", flush=True)


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 40, restarts: int = 3) -> float:
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    generator = torch.Generator().manual_seed(1)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for _ in range(restarts):
        point = lower + (upper - lower) * torch.rand(x.shape, generator=generator)
        for _ in range(steps):
            point.requires_grad_(True)
            (gradient,) = torch.autograd.grad(F.cross_entropy(model(point), y), point)
            point = torch.min(torch.max(point.detach() + eps / 8 * gradient.sign(), lower), upper)
        with torch.no_grad():
            robust &= model(point).argmax(1) == y
    return float(robust.float().mean())


def write_property(path: Path, image: np.ndarray, label: int, eps: float) -> None:
    """The VNN-LIB property 'some class scores at least the label's' over the clipped L-inf ball."""
    flat = image.reshape(-1)
    lines = [f"(declare-const X_{i} Real)" for i in range(flat.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, value in enumerate(flat):
        lines.append(f"(assert (>= X_{i} {max(0.0, value - eps):.8f}))")
        lines.append(f"(assert (<= X_{i} {min(1.0, value + eps):.8f}))")
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label)
    lines.append(f"(assert (or {others}))")
    path.write_text("\n".join(lines) + "\n")


def complete_verification(model: nn.Module, x: Tensor, y: Tensor, eps: float, folder: Path,
                          timeout: float) -> dict[str, int]:
    """Verdicts of `verify` on each image (misclassified ones count as not verified)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, x[:1], buffer, dynamo=False, opset_version=17)
    onnx_path.write_bytes(buffer.getvalue())
    settings = family_settings(None)
    counts = {"unsat": 0, "sat": 0, "misclassified": 0, "undecided": 0}
    with torch.no_grad():
        predictions = model(x).argmax(1)
    for index in range(len(x)):
        if predictions[index] != y[index]:
            counts["misclassified"] += 1
            continue
        prop = folder / f"image_{index}.vnnlib"
        write_property(prop, x[index].numpy(), int(y[index]), eps)
        verdict = verify_instance(str(onnx_path), str(prop), settings, Deadline(timeout)).verdict
        counts[verdict if verdict in counts else "undecided"] += 1
        if (index + 1) % 20 == 0:
            print(f"    verified {index + 1}/{len(x)}: {counts}", flush=True)
    return counts


def plot(log: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("normal", "-"), ("certified", "--")):
        rows = [r for r in log if r["model"] == name]
        epochs = [r["epoch"] for r in rows]
        left.plot(epochs, [r["loss"] for r in rows], style, label=f"{name} training loss")
        right.plot(epochs, [r["clean"] for r in rows], style, label=f"{name}: clean (train)")
        if name == "certified":
            right.plot(epochs, [r["verified"] for r in rows], ":", label="certified: bound-verified at the epoch's eps")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy on the training split")
    right.set_ylim(0, 1)
    right.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius in [0, 1] pixel units")
    parser.add_argument("--verify", type=int, default=100, help="test images checked by the complete verifier")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per verified image")
    parser.add_argument("--out", type=Path, default=Path("results/certified_training"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    train_x, train_y, test_x, test_y = load_digits()
    print(f"digits: {len(train_x)} training and {len(test_x)} test images; eps {args.eps}", flush=True)
    log: list[dict] = []
    results = {}
    for certified in (False, True):
        torch.manual_seed(0)
        model = small_cnn()
        train(model, (train_x, train_y), certified, args.epochs, args.eps, log)
        model.eval()
        name = "certified" if certified else "normal"
        with torch.no_grad():
            clean = float((model(test_x).argmax(1) == test_y).float().mean())
        pgd = pgd_accuracy(model, test_x, test_y, args.eps)
        net = verifier.BoundedModule(model, test_x[:1])
        with torch.no_grad():
            lower, upper = (test_x - args.eps).clamp(0, 1), (test_x + args.eps).clamp(0, 1)
            margins = net.compute_bounds(lower=lower, upper=upper, C=margin_rows(test_y), method="crown")[0]
        crown = float(((margins >= 0).all(1) & (model(test_x).argmax(1) == test_y)).float().mean())
        count = min(args.verify, len(test_x))
        print(f"  {name}: complete verification of {count} test images ({args.timeout:g} s each)", flush=True)
        verdicts = complete_verification(model, test_x[:count], test_y[:count], args.eps, args.out / name,
                                         args.timeout)
        results[name] = (clean, pgd, crown, verdicts["unsat"] / count, verdicts)
    count = min(args.verify, len(test_x))
    print(f"\ntest split, eps {args.eps} (L-inf, pixels in [0, 1]); clean, PGD and CROWN over all "
          f"{len(test_x)} test images, verified and the verdicts over the first {count}:")
    print(f"{'model':10} {'clean':>7} {'PGD':>7} {'CROWN':>7} {'verified':>9}  verdicts of `verify`")
    for name, (clean, pgd, crown, verified, verdicts) in results.items():
        print(f"{name:10} {clean:7.3f} {pgd:7.3f} {crown:7.3f} {verified:9.3f}  {verdicts}")
    plot(log, args.out / "training.png")
    print(f"training curves: {args.out / 'training.png'}")
    if any(math.isnan(r["loss"]) for r in log):
        raise SystemExit("the training loss became NaN")


if __name__ == "__main__":
    main()
