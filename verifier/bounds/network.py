"""The bound graph: variable nodes in topological order, each computed by one rule.

Constants are folded into the rules, so every node here depends on the network input. Node 0 is
the input. Tensors carry a leading batch axis in front of each node's per-sample shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from verifier.bounds.core import Rule


@dataclass(frozen=True)
class Node:
    """One value of the graph: the rule computing it (None for the input) and its inputs' indices."""

    rule: int | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    label: str


class Network(nn.Module):
    """A model as a graph of rules; `forward` evaluates it on a batch [B, *input_shape]."""

    def __init__(self, nodes: list[Node], rules: list[Rule], output: int, source: str) -> None:
        super().__init__()
        self.nodes = nodes
        self.rules = nn.ModuleList(rules)
        self.output = output
        self.source = source
        self.unbounded = ""  # the operators that Opaque nodes stand for (graph.build_network), if any
        # Bound the operators in exact arithmetic, as a VNN-LIB 2.0 query over `real` tensors asks:
        # no allowance for the deployed model's rounding (engine.execution_error), except where the
        # rounding is the operation itself (a Cast to a narrower float).
        self.real_arithmetic = False
        self.register_buffer("_anchor", torch.zeros(()))
        consumers: list[list[int]] = [[] for _ in nodes]
        for index, node in enumerate(nodes):
            for source_index in node.inputs:
                consumers[source_index].append(index)
        self.consumers = consumers

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[self.output].shape

    def rule(self, index: int) -> Rule:
        return self.rules[self.nodes[index].rule]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[self.output]

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Every node's value for the batch `x` [B, *input_shape]; a node that the model computes
        in a narrower float type (after a Cast) is rounded to it, as onnxruntime would (moves and
        selections compute nothing, so they pass their input on as it is)."""
        values: list[Tensor] = [x]
        for node in self.nodes[1:]:
            rule = self.rules[node.rule]
            value = rule(*(values[i] for i in node.inputs))
            narrower = not rule.exact and rule.exec_dtype is not None \
                and torch.finfo(rule.exec_dtype).eps > torch.finfo(value.dtype).eps
            values.append(value.to(rule.exec_dtype).to(value.dtype) if narrower else value)
        return values

    def ancestors(self, index: int) -> list[int]:
        """Indices of `index` and every node it depends on, in topological order."""
        seen = {index}
        stack = [index]
        while stack:
            for source_index in self.nodes[stack.pop()].inputs:
                if source_index not in seen:
                    seen.add(source_index)
                    stack.append(source_index)
        return sorted(seen)
