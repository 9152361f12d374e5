"""The library: bounds of a torch module or an ONNX model over a region of its inputs and weights.

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
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from verifier.bounds.core import Ball, BallPart, Interval, lp_ball
from verifier.bounds.engine import backward_bound, crown_bounds
from verifier.bounds.network import Network
from verifier.bounds.optimize import optimize_bounds
from verifier.bounds.relaxation import AlphaStore
from verifier.bounds.smooth import Exp
from verifier.graph import build_network
from verifier.load import LoadedModel, load_model
from verifier.output_bounds import OutputBounds, bound_outputs, combined_bounds, output_rows
from verifier.settings import OUTPUT_METHODS, AlphaSettings
from verifier.trace import trace_module

METHODS = OUTPUT_METHODS
NORMS = (1.0, 2.0, math.inf)


class BoundedModule:
    """A model whose outputs can be bounded over L-inf, L2 and L1 balls and boxes of its input,
    and over perturbations of chosen parameters.

    `model` is a torch.nn.Module (traced with torch.fx on `example_input`, a batch [B, *shape])
    or the path of an ONNX file (whose declared input shape is used; `example_input` is then
    optional). The module is bounded as it computes in eval mode (batch norm with its running
    statistics, no dropout), and its parameters are read at every call, so bounds follow training.
    """

    def __init__(self, model: nn.Module | str | os.PathLike, example_input: Tensor | None = None) -> None:
        if isinstance(model, (str, os.PathLike)):
            self._loaded: LoadedModel = load_model(os.fspath(model))
            self._module: nn.Module = self._loaded.module
        elif isinstance(model, nn.Module):
            if example_input is None:
                raise ValueError("example_input: a torch module needs an example input batch to be traced")
            with _eval_mode(model):
                self._loaded = trace_module(model, example_input)
            self._module = model
        else:
            raise TypeError(f"model: expected a torch.nn.Module or an ONNX path, got {type(model).__name__}")
        self._fused: LoadedModel | None = None  # the module with its cross-entropy, for robust_loss
        self._built: dict[tuple, tuple[tuple, Network]] = {}
        self._last: tuple[Network, list[Interval | None]] | None = None

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
                       upper: Tensor | None = None, weights: Mapping[str, float | Tensor] | None = None,
                       weight_norm: float = math.inf, bound_lower: bool = True, bound_upper: bool = True,
                       alpha: AlphaSettings | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Lower and upper bounds [B, outputs] of the flattened outputs, or [B, rows] of `C @ output`
        with a specification `C` [B, rows, outputs], over the Lp ball of radius `eps` around each
        `x` [B, *input_shape] (`norm` inf, 2 or 1), or over the box `lower` <= x <= `upper`.

        `weights` maps names of the module's parameters (as `named_parameters` gives them) to a
        radius: each then varies in its own ball of that radius and of `weight_norm` around its
        value, together with the input (give `eps=0` for the weights alone). Only weights of
        linear layers (and biases) may vary. `method`: "ibp", "crown", "crown-ibp" (IBP
        intermediate bounds, CROWN at the output), "forward" (forward-mode linear bounds) or
        "alpha-crown" (optimised relaxations, `alpha` configures the search). A side not asked
        for (`bound_lower`, `bound_upper`) is None and costs nothing. The bounds hold in floating
        point for the model as it computes in its dtype.
        """
        region = self._region(x, eps, norm, lower, upper)
        cases = region.lower.shape[0]
        spec = self._spec(C, cases, region.lower)
        regions, variables = self._weight_regions(weights, weight_norm, cases)
        result = self._bound(self._loaded, variables, [region, *regions], method, spec, (bound_lower, bound_upper),
                             alpha)
        return result.lower, result.upper

    def robust_loss(self, x: Tensor | None, labels: Tensor, eps: float | Tensor | None = None, norm: float = math.inf,
                    method: str = "crown-ibp", lower: Tensor | None = None, upper: Tensor | None = None,
                    weights: Mapping[str, float | Tensor] | None = None, weight_norm: float = math.inf,
                    alpha: AlphaSettings | None = None) -> Tensor:
        """An upper bound [B] of the cross-entropy loss of each sample over its input region and
        its weights' (as in `compute_bounds`), for a classifier with `labels` [B] (class indices).

        The loss is part of the bounded graph (loss fusion: log sum_j exp(z_j - z_y), one row
        per sample), so the cost does not grow with the number of classes as bounding every
        margin z_y - z_j does.
        """
        region = self._region(x, eps, norm, lower, upper)
        cases = region.lower.shape[0]
        if labels.shape != (cases,):
            raise ValueError(f"labels: expected [B={cases}] class indices, got {tuple(labels.shape)}")
        if self._fused is None:
            example = region.lower[:1].reshape(1, *self._loaded.input_shape[1:])
            with _eval_mode(self._module):
                self._fused = trace_module(_CrossEntropy(self._module), example, torch.zeros(1, self.num_outputs))
        onehot = torch.nn.functional.one_hot(labels, self.num_outputs).to(region.lower.dtype).reshape(cases, 1, -1)
        regions, variables = self._weight_regions(weights, weight_norm, cases)
        result = self._bound(self._fused, variables, [region, Interval(onehot, onehot), *regions], method, None,
                             (False, True), alpha)
        return torch.minimum(result.upper.reshape(cases), self._largest_margin_bound(cases))

    def _largest_margin_bound(self, cases: int) -> Tensor:
        """log sum_j exp(d_j) <= max_j d_j + log K, from the bounds of the differences d = z - z_y
        that the fused pass found (the input of its exponential): finite where the exponential of
        a large difference overflows, and outwards by a few roundings of that sum."""
        network, bounds = self._last
        exponentials = [index for index, node in enumerate(network.nodes)
                        if node.rule is not None and isinstance(network.rules[node.rule], Exp)]
        differences = bounds[network.nodes[exponentials[-1]].inputs[0]]
        largest = differences.upper.reshape(cases, -1).amax(1) + math.log(self.num_outputs)
        return largest + 8 * torch.finfo(largest.dtype).eps * (largest.abs() + 1)

    def intermediate_bounds(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Every node's interval from the last call, by node label (the operation and where the
        model computes it), each [B, *shape] with the leading batch axis."""
        if self._last is None:
            raise RuntimeError("intermediate_bounds(): call compute_bounds first")
        network, bounds = self._last
        return {f"{index}: {network.nodes[index].label}": (bound.lower, bound.upper)
                for index, bound in enumerate(bounds) if bound is not None}

    # -- the pieces -----------------------------------------------------------------------

    def _bound(self, loaded: LoadedModel, variables: list[Tensor], regions: list[Interval], method: str,
               spec: Tensor | None, sides: tuple[bool, bool], alpha: AlphaSettings | None) -> OutputBounds:
        if method not in METHODS:
            raise ValueError(f"method '{method}': expected one of {', '.join(METHODS)}")
        region = _joint(regions)
        gradients = torch.is_grad_enabled() and (any(r.lower.requires_grad for r in regions) or self._trainable())
        network = self._network(loaded, variables, gradients)
        if method == "alpha-crown":
            result = self._alpha_crown(loaded, variables, network, region, spec, sides, alpha or AlphaSettings(),
                                       gradients)
        else:
            result = bound_outputs(network, region, method, spec=spec, sides=sides)
        self._last = (network, result.intermediate)
        return result

    def _region(self, x: Tensor | None, eps, norm: float, lower: Tensor | None, upper: Tensor | None) -> Interval:
        shape = self._loaded.input_shape
        if eps is not None:
            if x is None or lower is not None or upper is not None:
                raise ValueError("give either x and eps (a ball) or lower and upper (a box)")
            return _ball(self._as_batch(x, "x", shape), eps, norm, "eps")
        if lower is None or upper is None:
            raise ValueError("give either x and eps (a ball) or lower and upper (a box)")
        box = Interval(self._as_batch(lower, "lower", shape), self._as_batch(upper, "upper", shape))
        if bool((box.lower > box.upper).any()):
            raise ValueError("lower > upper somewhere: the box is empty")
        return box

    def _weight_regions(self, weights: Mapping[str, float | Tensor] | None, norm: float,
                        cases: int) -> tuple[list[Interval], list[Tensor]]:
        """The regions of the perturbed parameters (in name order) and the parameters themselves."""
        known = dict(self._module.named_parameters())
        for name in weights or {}:
            if name not in known:
                raise ValueError(f"weights: '{name}' is not a parameter of the module "
                                 f"(it has {', '.join(known) or 'none'})")
        names = sorted(weights or {})
        regions = [_ball(known[name].unsqueeze(0).expand(cases, *known[name].shape), weights[name], norm,
                         f"weights['{name}']") for name in names]
        return regions, [known[name] for name in names]

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
        return [*self._module.parameters(), *self._module.buffers()]

    def _network(self, loaded: LoadedModel, variables: list[Tensor], gradients: bool) -> Network:
        """The Network for the module's current parameters: rebuilt when they have changed (a
        tensor's id, storage or version moved) and, for gradients, at every call, so that the constants derived
        from them (a batch norm's scale) carry this step's autograd history."""
        key = (id(loaded), *(id(v) for v in variables))
        # a tensor replaced (a new Parameter, `p.data = ...`) keeps its version counter at 0
        versions = tuple((id(t), t.data_ptr(), t._version) for t in self._tensors())
        cached = self._built.get(key)
        if not gradients and cached is not None and cached[0] == versions:
            return cached[1]
        with _eval_mode(self._module):
            network = build_network(loaded, gradients=gradients, variables=variables)
        if not gradients:  # one with autograd history is good for one backward pass only
            self._built[key] = (versions, network)
        return network

    def _alpha_crown(self, loaded: LoadedModel, variables: list[Tensor], network: Network, region: Interval,
                     spec: Tensor | None, sides: tuple[bool, bool], settings: AlphaSettings,
                     gradients: bool) -> OutputBounds:
        """The search runs with the module's parameters frozen (it must not write their .grad);
        with gradients, one more CROWN pass with the parameters it found gives the bound's
        autograd history, and the best bound of the search is shifted onto it."""
        coeffs = output_rows(network, region.lower.shape[0], spec, sides)
        with _frozen(self._module), torch.no_grad():
            searched = optimize_bounds(self._network(loaded, variables, False) if gradients else network,
                                       _detached(region), coeffs, settings, intermediate="backward")
        if not gradients:
            return combined_bounds(network, region, searched.intermediate, searched.bound, spec, sides)
        found = AlphaStore.holding({key: [p.detach() for p in group] for key, group in searched.alphas.params.items()})
        found.positions = searched.alphas.positions
        bounds = crown_bounds(network, region, found, reference=searched.intermediate)
        final = backward_bound(network, network.output, coeffs, bounds, found, "final")
        better = searched.bound.lower > final.lower
        final.lower = torch.where(better, final.lower + (searched.bound.lower - final.lower).detach(), final.lower)
        final.magnitude = torch.where(better, searched.bound.magnitude, final.magnitude)  # sizes its margin
        return combined_bounds(network, region, bounds, final, spec, sides)


class _CrossEntropy(nn.Module):
    """The classifier's cross-entropy as a graph: log sum_j exp(z_j - z_y), with the label given
    as a one-hot input [B, 1, classes]. The differences cancel the logits' common part before the
    exponential, and the term j = y is exp(0) = 1, so the sum never underflows below 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, onehot: Tensor) -> Tensor:
        logits = torch.flatten(self.model(x), 1)
        target = torch.sum(logits * torch.flatten(onehot, 1), dim=1, keepdim=True)
        return torch.log(torch.sum(torch.exp(logits - target), dim=1))


def _ball(point: Tensor, eps: float | Tensor, norm: float, name: str) -> Interval:
    """The Lp ball of radius `eps` (a float, or one per batch entry) around each `point` [B, *shape]."""
    if float(norm) not in NORMS:
        raise ValueError(f"norm {norm}: expected float('inf'), 2 or 1")
    radius = torch.as_tensor(eps, dtype=point.dtype, device=point.device)
    if radius.dim() > 1 or (radius.dim() == 1 and radius.shape[0] != point.shape[0]):
        raise ValueError(f"{name}: a radius is a number or one per batch entry [B={point.shape[0]}], "
                         f"got shape {tuple(radius.shape)}")
    if bool((radius < 0).any()):
        raise ValueError(f"{name} {eps}: a radius cannot be negative")
    return lp_ball(point, radius, float(norm))


def _joint(regions: list[Interval]) -> Interval:
    """One region over the flat concatenation of several inputs' regions (the layout of
    graph.build_network's node 0 for several inputs)."""
    if len(regions) == 1:
        return regions[0]
    batch = regions[0].lower.shape[0]
    lower = torch.cat([r.lower.reshape(batch, -1) for r in regions], dim=1)
    upper = torch.cat([r.upper.reshape(batch, -1) for r in regions], dim=1)
    parts, offset = [], 0
    for region in regions:
        if isinstance(region, Ball):
            parts += [BallPart(p.index + offset, p.point, p.eps, p.norm) for p in region.parts]
        offset += region.lower[0].numel()
    return Ball(lower, upper, parts) if parts else Interval(lower, upper)


def _detached(region: Interval) -> Interval:
    if not isinstance(region, Ball):
        return Interval(region.lower.detach(), region.upper.detach())
    parts = [BallPart(p.index, p.point.detach(), p.eps.detach(), p.norm) for p in region.parts]
    return Ball(region.lower.detach(), region.upper.detach(), parts)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    parameters = [p for p in module.parameters() if p.requires_grad]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)
