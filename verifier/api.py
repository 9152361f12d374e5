"""The library: bounds of a torch module or an ONNX model over a region of its inputs.

    net = verifier.BoundedModule(model, example_input)
    lower, upper = net.compute_bounds(x, eps=0.03, norm=float("inf"), method="crown")

The module is traced with torch.fx (an ONNX file goes through the loader) into the same Network
of rules that `verify` builds, and bounded by the same engine. Bounds are differentiable with
respect to the input and to the module's parameters, so they can be trained on.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from verifier.bounds.core import Ball, Interval
from verifier.bounds.engine import backward_bound, crown_bounds
from verifier.bounds.network import Network
from verifier.bounds.optimize import optimize_bounds
from verifier.bounds.relaxation import AlphaStore
from verifier.graph import build_network
from verifier.load import LoadedModel, load_model
from verifier.output_bounds import OutputBounds, bound_outputs, combined_bounds
from verifier.settings import AlphaSettings
from verifier.trace import trace_module

METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")
NORMS = (1.0, 2.0, math.inf)


class BoundedModule:
    """A model whose outputs can be bounded over L-inf, L2 and L1 balls and over boxes.

    `model` is a torch.nn.Module (traced with torch.fx on `example_input`, a batch [B, *shape])
    or the path of an ONNX file (whose declared input shape is used; `example_input` is then
    optional). The module is bounded as it computes in eval mode (batch norm with its running
    statistics, no dropout), and its parameters are read at every call, so bounds follow training.
    """

    def __init__(self, model: nn.Module | str | os.PathLike, example_input: Tensor | None = None) -> None:
        if isinstance(model, (str, os.PathLike)):
            self._loaded: LoadedModel = load_model(os.fspath(model))
            self._module: nn.Module | None = None
        elif isinstance(model, nn.Module):
            if example_input is None:
                raise ValueError("example_input: a torch module needs an example input batch to be traced")
            with _eval_mode(model):
                self._loaded = trace_module(model, example_input)
            self._module = model
        else:
            raise TypeError(f"model: expected a torch.nn.Module or an ONNX path, got {type(model).__name__}")
        self._network: Network | None = None
        self._versions: tuple[int, ...] = ()
        self._intermediate: list[Interval | None] = []

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape, as `x[0]` has it."""
        shape = self._loaded.input_shape
        return shape[1:] if shape and shape[0] == 1 else shape

    @property
    def num_outputs(self) -> int:
        return self._loaded.num_outputs

    def compute_bounds(self, x: Tensor | None = None, eps: float | Tensor | None = None, norm: float = math.inf,
                       method: str = "crown", C: Tensor | None = None, lower: Tensor | None = None,
                       upper: Tensor | None = None, alpha: AlphaSettings | None = None) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds [B, outputs] of the flattened outputs, or [B, rows] of `C @ output`
        with a specification `C` [B, rows, outputs], over the Lp ball of radius `eps` around each
        `x` [B, *input_shape] (`norm` inf, 2 or 1), or over the box `lower` <= x <= `upper`.

        `method`: "ibp", "crown", "crown-ibp" (IBP intermediate bounds, CROWN at the output) or
        "alpha-crown" (optimised relaxations, `alpha` configures the search). The bounds hold in
        floating point for the model as it computes in its dtype.
        """
        if method not in METHODS:
            raise ValueError(f"method '{method}': expected one of {', '.join(METHODS)}")
        region = self._region(x, eps, norm, lower, upper)
        spec = self._spec(C, region.lower.shape[0], region.lower)
        gradients = torch.is_grad_enabled() and (region.lower.requires_grad or self._trainable())
        network = self._current_network(gradients)
        if method == "alpha-crown":
            result = self._alpha_crown(network, region, spec, alpha or AlphaSettings(), gradients)
        else:
            result = bound_outputs(network, region, method, spec=spec)
        self._intermediate = result.intermediate
        return result.lower, result.upper

    def intermediate_bounds(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Every node's interval from the last `compute_bounds` call, by node label (the operation
        and where the model computes it), each [B, *shape] with the leading batch axis."""
        if not self._intermediate:
            raise RuntimeError("intermediate_bounds(): call compute_bounds first")
        nodes = self._network.nodes
        return {f"{index}: {nodes[index].label}": (bound.lower, bound.upper)
                for index, bound in enumerate(self._intermediate) if bound is not None}

    # -- the pieces -----------------------------------------------------------------------

    def _region(self, x: Tensor | None, eps, norm: float, lower: Tensor | None, upper: Tensor | None) -> Interval:
        shape = self._loaded.input_shape
        if eps is not None:
            if x is None or lower is not None or upper is not None:
                raise ValueError("give either x and eps (a ball) or lower and upper (a box)")
            if float(norm) not in NORMS:
                raise ValueError(f"norm {norm}: expected float('inf'), 2 or 1")
            point = self._as_batch(x, "x", shape)
            radius = torch.as_tensor(eps, dtype=point.dtype, device=point.device)
            if bool((radius < 0).any()):
                raise ValueError(f"eps {eps}: a radius cannot be negative")
            if float(norm) == math.inf:
                radius = radius.reshape(-1, *(1,) * len(shape)) if radius.dim() else radius
                return Interval(point - radius, point + radius)
            return Ball(point, radius, int(norm))
        if lower is None or upper is None:
            raise ValueError("give either x and eps (a ball) or lower and upper (a box)")
        box = Interval(self._as_batch(lower, "lower", shape), self._as_batch(upper, "upper", shape))
        if bool((box.lower > box.upper).any()):
            raise ValueError("lower > upper somewhere: the box is empty")
        return box

    def _as_batch(self, value: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
        if not isinstance(value, Tensor) or value.dim() < 1 or value[0].numel() != math.prod(shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name}: expected a batch [B, {', '.join(map(str, self.input_shape))}], got {got}")
        return value.to(self._loaded.dtype).reshape(value.shape[0], *shape)

    def _spec(self, C: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        if C is None:
            return None
        if C.dim() != 3 or C.shape[0] != batch or C.shape[2] != self.num_outputs:
            raise ValueError(f"C: expected [B={batch}, rows, outputs={self.num_outputs}], got {tuple(C.shape)}")
        return C.to(like.dtype)

    def _trainable(self) -> bool:
        return any(t.requires_grad for t in self._tensors())

    def _tensors(self) -> list[Tensor]:
        """The module's parameters and buffers: what the rules may hold."""
        return [] if self._module is None else [*self._module.parameters(), *self._module.buffers()]

    def _current_network(self, gradients: bool) -> Network:
        """The Network for the module's current parameters: rebuilt when they have changed (their
        version counters moved) and, for gradients, at every call, so that the constants derived
        from them (a batch norm's scale) carry this step's autograd history."""
        versions = self._parameter_versions()
        if gradients or self._network is None or versions != self._versions:
            with _eval_mode(self._module):
                self._network = build_network(self._loaded, gradients=gradients)
            self._versions = versions
            if gradients:  # a network with autograd history is good for one backward pass only
                self._versions = ()
        return self._network

    def _parameter_versions(self) -> tuple[int, ...]:
        return tuple(t._version for t in self._tensors())

    def _alpha_crown(self, network: Network, region: Interval, spec: Tensor | None, settings: AlphaSettings,
                     gradients: bool) -> OutputBounds:
        """The search runs with the module's parameters frozen (it must not write their .grad);
        with gradients, one more CROWN pass with the parameters it found gives the bound's
        autograd history, and the best bound of the search is shifted onto it."""
        cases = region.lower.shape[0]
        count = math.prod(network.output_shape)
        rows = spec if spec is not None else torch.eye(count, dtype=network.dtype).expand(cases, count, count)
        coeffs = torch.cat([rows, -rows], dim=1).reshape(cases, 2 * rows.shape[1], *network.output_shape)
        detached = Interval(region.lower.detach(), region.upper.detach()) if not isinstance(region, Ball) \
            else Ball(region.point.detach(), region.eps.detach(), region.norm)
        with _frozen(self._module), torch.no_grad():
            searched = optimize_bounds(network if not gradients else build_network(self._loaded),
                                       detached, coeffs, settings)
        if not gradients:
            return combined_bounds(network, region, searched.intermediate, searched.bound, spec)
        found = AlphaStore.holding({key: [p.detach() for p in group] for key, group in searched.alphas.params.items()})
        found.positions = searched.alphas.positions
        bounds = crown_bounds(network, region, found, reference=searched.intermediate)
        final = backward_bound(network, network.output, coeffs, bounds, found, "final")
        better = searched.bound.lower > final.lower
        final.lower = torch.where(better, final.lower + (searched.bound.lower - final.lower).detach(), final.lower)
        return combined_bounds(network, region, bounds, final, spec)


@contextlib.contextmanager
def _eval_mode(module: nn.Module | None) -> Iterator[None]:
    if module is None:
        yield
        return
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _frozen(module: nn.Module | None) -> Iterator[None]:
    parameters = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)
