"""A node that no rule bounds: its own operator computes it, and its bounds are the whole line.

The verifier builds one for every operator (or use of one) without a rule, so that the rest of
the model is still bounded, the falsifier still runs on the whole model, and an answer is still
possible: `sat` from a checked counterexample, or `unsat` where later nodes cut the unbounded
values off (a Where whose condition is decided, a ReLU whose other inputs keep it inactive). Its
interval is (-inf, inf) and its linear bounds are constant lines of that interval.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from verifier.bounds.core import Backward, Interval, Rule
from verifier.bounds.logic import constant_lines


class Opaque(Rule):
    """`call(*per_sample_operands)` for each batch entry, on the variable operands cast back to
    the dtypes the operator saw (`dtypes`: integers stay integers); its output is cast to the
    network dtype. `call` stays out of the module tree, so that moving the rule to another dtype
    does not convert the model's own weights."""

    exact = True  # the interval holds every value, onnxruntime's included

    def __init__(self, call: Callable[..., Tensor], dtypes: list[torch.dtype], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self._call = (call,)
        self.dtypes = dtypes
        self.out_shape = tuple(out_shape)

    def on_integers(self) -> str:
        return "exact"

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.stack([self._one(*(x[b] for x in inputs)) for b in range(inputs[0].shape[0])])

    def _one(self, *operands: Tensor) -> Tensor:
        """The operator on one sample; NaN where it fails or gives another shape (an operand that
        sets a shape, as a Slice's start can): such a point is outside what the graph describes,
        and NaN makes the falsifier pass over it."""
        reference = operands[0]
        try:
            result = torch.as_tensor(self._call[0](*(x.to(d) for x, d in zip(operands, self.dtypes))))
        except Exception:  # noqa: BLE001 - the operator's own failure at this point
            result = None
        if result is None or tuple(result.shape) != self.out_shape:
            return torch.full(self.out_shape, torch.nan, dtype=reference.dtype, device=reference.device)
        return result.to(reference.dtype)

    def _everything(self, like: Tensor) -> Interval:
        infinite = torch.full((like.shape[0], *self.out_shape), torch.inf, dtype=like.dtype, device=like.device)
        return Interval(-infinite, infinite)

    def ibp(self, *inputs: Interval) -> Interval:
        return self._everything(inputs[0].lower)

    def backward(self, coeffs: Tensor, *inputs: Interval | None) -> Backward:
        return Backward([None] * len(inputs), constant_lines(coeffs, self._everything(coeffs)))
