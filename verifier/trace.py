"""A torch module as the loader's LoadedModel, through a torch.fx trace.

The trace keeps the module's own submodules and parameters (no copies), so the bound rules built
from it hold the tensors that training updates. Nodes are labelled by what they call and by the
line of the user's source that called it, for the unsupported-operator message.
"""

from __future__ import annotations

import os
import re

import torch
from torch import Tensor, fx, nn

from verifier.bounds import factory_for
from verifier.bounds.core import covers_exactly
from verifier.errors import ModelError, first_line
from verifier.load import LoadedModel

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_TORCH_DIR = os.path.dirname(torch.__file__)


def trace_module(module: nn.Module, example: Tensor, *extras: Tensor) -> LoadedModel:
    """Trace `module` (in eval mode) on the batch `example` [B, *shape] (and, for a module with
    further inputs, on `extras`); the loaded model's input shape is `(1, *shape)`, as the ONNX
    export of the module would declare it."""
    name = f"{type(module).__name__} (torch module)"
    for value in (example, *extras):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 1:
            raise ModelError(name, "the example input must be a floating-point tensor with a batch axis")
    tracer = _Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(module)
    except Exception as error:  # noqa: BLE001 - fx raises many types for code it cannot trace
        problem = f"{type(error).__name__}: {first_line(error)}"
        raise ModelError(name, f"torch.fx cannot trace the module: {problem}") from None
    traced = fx.GraphModule(module, graph)
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1 + len(extras):
        raise ModelError(name, f"forward takes {len(inputs)} inputs; only single-input modules are supported")
    sample = example[:1]
    with torch.no_grad():
        try:
            output = module(sample, *(extra[:1] for extra in extras))
        except Exception as error:  # noqa: BLE001
            raise ModelError(name, f"the module fails on the example input: {type(error).__name__}: "
                             f"{first_line(error)}") from None
    if not isinstance(output, Tensor):
        raise ModelError(name, "the module's output is not one tensor")
    labels = {_key(node): (_operation(traced, node), _location(node)) for node in graph.nodes
              if node.op in ("call_module", "call_function", "call_method")}
    return LoadedModel(name, traced, inputs[0].name, tuple(sample.shape), tuple(output.shape), example.dtype, labels,
                       extra_input_shapes=tuple(tuple(extra[:1].shape) for extra in extras))


class _Tracer(fx.Tracer):
    """Keeps every module that a bound rule covers as one node (torch's own layers, and the
    modules of a converted ONNX model, which a module may wrap), rather than tracing into it."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, nn.Sequential):
            return False
        if covers_exactly(module):
            return True
        # torch's own layers stay leaves (and are refused by name if no rule covers them); a
        # subclass of one with its own forward is traced into
        return super().is_leaf_module(module, qualified_name) and factory_for(module) is None


def _key(node: fx.Node) -> str:
    """How graph.build_network looks a node's label up."""
    return node.target if node.op == "call_module" else node.name


def _operation(traced: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(traced.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _location(node: fx.Node) -> str:
    """`file.py:line` of the user's code that made the node (its last frame outside torch)."""
    frames = [(path, line) for path, line in _FRAME.findall(node.meta.get("stack_trace") or "")
              if not path.startswith(_TORCH_DIR)]
    if not frames:
        return node.name
    path, line = frames[-1]
    return f"{os.path.basename(path)}:{line}"
