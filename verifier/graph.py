"""Build the bound graph (`Network`) from a converted fx GraphModule.

The fx graph is walked once in order. Every node whose operands are all constant is evaluated and
folded; every other node is handed to the factory registered for its module type, which adds rules.
Each result is compared with the module's own output at a probe input, so a rule that computes
something else than the operator it stands for is caught when the model is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, fx
from torch.fx.operator_schemas import get_signature_for_torch_op, normalize_function

from verifier.bounds import factory_for
from verifier.bounds.core import Rule, Unsupported
from verifier.bounds.network import Network, Node
from verifier.bounds.opaque import Opaque
from verifier.bounds.shape import Select
from verifier.errors import ModelError
from verifier.load import LoadedModel, describe_unsupported


class Value:
    """A variable of the graph under construction: node index and value at the probe [1, *shape]."""

    def __init__(self, index: int, probe: Tensor) -> None:
        self.index = index
        self.probe = probe

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.probe.shape[1:])


class _Opaque:
    """Stands for the output of an unsupported node, so that later nodes are still examined."""


class Builder:
    """What operator factories use to add rules to the graph."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[Node] = []
        self.rules: list[Rule] = []
        self.label = "input"
        # The float type onnxruntime computes the current ONNX node in (its output's type), and
        # that of every node added so far.
        self.exec_dtype = dtype
        self.node_dtypes: list[torch.dtype] = []
        self.variables: dict[int, Value] = {}  # id of a perturbed parameter -> its graph input

    def input(self, probe: Tensor) -> Value:
        self.nodes.append(Node(None, (), tuple(probe.shape[1:]), "input"))
        self.node_dtypes.append(self.dtype)
        return Value(0, probe)

    def inputs(self, probes: Sequence[Tensor]) -> list[Value]:
        """Node 0 for several inputs ([1, *shape] probes): their flat concatenation, of which each
        input is a selection (one input: node 0 itself, as `input`)."""
        if len(probes) == 1:
            return [self.input(probes[0])]
        joint = self.input(torch.cat([p.reshape(1, -1) for p in probes], dim=1))
        values, offset = [], 0
        for number, probe in enumerate(probes):
            size = probe[0].numel()
            self.label = f"input part {number}"
            part = Select(torch.arange(offset, offset + size), torch.zeros(size), joint.shape, tuple(probe.shape[1:]))
            values.append(self.add(part, [joint]))
            offset += size
        return values

    def parameter(self, tensor: Tensor | None) -> Tensor | Value | None:
        """A parameter of the model as a factory should use it: the graph input standing for it
        where it is perturbed, else the tensor itself."""
        return self.variables.get(id(tensor), tensor) if tensor is not None else None

    def exec_dtype_of(self, value: Value) -> torch.dtype:
        return self.node_dtypes[value.index]

    def add(self, rule: Rule, inputs: Sequence[Value]) -> Value:
        rule = rule.to(self.dtype)
        rule.exec_dtype = self.exec_dtype
        probe = rule(*(value.probe for value in inputs))
        self.rules.append(rule)
        self.node_dtypes.append(self.exec_dtype)
        self.nodes.append(Node(len(self.rules) - 1, tuple(v.index for v in inputs), tuple(probe.shape[1:]), self.label))
        return Value(len(self.nodes) - 1, probe)

    @staticmethod
    def is_variable(value: object) -> bool:
        return isinstance(value, Value)

    @staticmethod
    def constant_value(value: object) -> object:
        return value

    def float_constant(self, value: object) -> Tensor:
        return torch.as_tensor(value).to(self.dtype)

    @staticmethod
    def shape_of(value: object) -> tuple[int, ...]:
        return value.shape if isinstance(value, Value) else tuple(torch.as_tensor(value).shape)

    @staticmethod
    def evaluate_operand(value: object) -> object:
        return value.probe[0] if isinstance(value, Value) else value

    def evaluate(self, module, args: Sequence[object]) -> Tensor:
        """The module's own output on the probe values (per-sample shape)."""
        return module(*(self.evaluate_operand(a) for a in args))


def build_network(model: LoadedModel, probe: Tensor | None = None, gradients: bool = False,
                  variables: Sequence[Tensor] = (), opaque: bool = False) -> Network:
    """Turn `model` into a Network of rules; unsupported operators raise ModelError (all listed),
    or with `opaque` become Opaque nodes (bounds (-inf, inf)), listed in `network.unbounded`.

    `variables` are parameters of the module that become inputs of the graph, for bounds over
    perturbed weights. With more than one input (the module's further inputs, of
    `model.extra_input_shapes`, then `variables`, in that order), node 0 is their flat
    concatenation; one input keeps its own shape.

    With `gradients`, the constants that rules derive from the model's parameters (a batch norm's
    scale, a transposed weight) keep their autograd history, so that bounds computed with the
    Network are differentiable with respect to those parameters; rules hold the parameters
    themselves either way.
    """
    module = model.module
    if probe is None:
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(model.input_shape, generator=generator, dtype=torch.float64)
    probe = probe.reshape(model.input_shape).to(model.dtype)
    generator = torch.Generator().manual_seed(1)
    extras = [torch.rand(shape, generator=generator, dtype=torch.float64).to(model.dtype)
              for shape in model.extra_input_shapes]
    builder = Builder(model.dtype)
    parts = builder.inputs([t.unsqueeze(0) for t in [probe, *extras, *(v.detach() for v in variables)]])
    placeholders = iter(zip(parts, [probe, *extras]))
    builder.variables = {id(v): value for v, value in zip(variables, parts[1 + len(extras):])}
    env: dict[fx.Node, object] = {}
    truth: dict[fx.Node, object] = {}
    unsupported: dict[str, list[str]] = {}
    output: object = None
    with torch.set_grad_enabled(gradients):
        for node in module.graph.nodes:
            if node.op == "placeholder":
                env[node], truth[node] = next(placeholders)
            elif node.op == "get_attr":
                truth[node] = _fetch_attr(module, node.target)
                env[node] = builder.parameter(truth[node])
            elif node.op in ("call_module", "call_function", "call_method"):
                target, node_args, node_kwargs, options = _call(module, node, truth)
                key = node.target if node.op == "call_module" else node.name
                op_type, name = model.onnx_nodes.get(key, (getattr(target, "__name__", str(target)), node.name))
                builder.label = f"{op_type} '{name}'"
                builder.exec_dtype = model.node_dtypes.get(name, model.dtype)
                # keyword-only operands (a dtype, torch.add's alpha) are the truth's, not the factories'
                factory_kwargs = {} if options is not None else fx.node.map_arg(node_kwargs, env.get)
                args = _positional(target, fx.node.map_arg(node_args, env.get), factory_kwargs)
                truth_args, truth_kwargs = fx.node.map_arg((node_args, node_kwargs), truth.get)
                if node.op == "call_module":  # onnx2torch's modules: operands after a skipped one
                    truth_args, truth_kwargs = _positional(target, truth_args, truth_kwargs), {}
                try:
                    truth[node] = target(*truth_args, **truth_kwargs)
                except Exception as error:  # noqa: BLE001
                    raise ModelError(model.path, f"{builder.label} fails on a sample input: {error}") from None
                # built only for a node that turns out unsupported, while this node's operands are current
                call = (lambda target=target, operands=(node_args, node_kwargs):
                        _per_sample_call(target, operands, env, truth)) if opaque else None
                if options:  # keyword-only operands away from their defaults: no factory reads them
                    op_type = f"{op_type} with {', '.join(f'{k}={v!r}' for k, v in options.items())}"
                    target = None
                env[node] = _build_node(builder, target, args, truth[node], op_type, unsupported, call)
            elif node.op == "output":
                output = env[node.args[0]] if not isinstance(node.args[0], (tuple, list)) else None
    if unsupported and not opaque:
        raise ModelError(model.path, f"unsupported operators: {describe_unsupported(unsupported)}")
    consumed = {index for node in builder.nodes for index in node.inputs}
    if any(value.index not in consumed for value in builder.variables.values()):
        # a factory read the parameter itself (a layer whose rule cannot vary it): bounds over its
        # perturbation would silently hold it fixed
        raise ModelError(model.path, "a perturbed parameter is used by a layer that cannot vary it "
                         "(only the weights and biases of linear layers can)")
    if not isinstance(output, Value) and unsupported:
        raise ModelError(model.path, f"unsupported operators: {describe_unsupported(unsupported)}")
    if not isinstance(output, Value):
        raise ModelError(model.path, "the model's output does not depend on its input, or is not one tensor")
    network = Network(builder.nodes, builder.rules, output.index, model.path).to(model.dtype)
    network.unbounded = describe_unsupported(unsupported)
    return network


def _build_node(builder: Builder, target, args: list, truth: object, op_type: str,
                unsupported: dict[str, list[str]], call: Callable[[], tuple | None] | None = None) -> object:
    """The node's value: folded, built by its factory, or (unsupported) an Opaque node where
    `call` gives one (see `_per_sample_call`), else a placeholder that only lets later nodes be
    examined."""
    flat = _flatten(args)
    depends_on_input = any(isinstance(a, (Value, _Opaque)) for a in flat)
    if not depends_on_input:
        return truth  # constant folding: every operand is a constant
    name = builder.label.split("'")[1] if "'" in builder.label else op_type
    factory = factory_for(target)
    if factory is None:
        unsupported.setdefault(op_type, []).append(name)
        return _opaque(builder, call, truth)
    if any(isinstance(a, _Opaque) for a in flat):
        return _Opaque()  # downstream of an unsupported node: only its own support was checked
    first_rule, first_node = len(builder.rules), len(builder.nodes)
    try:
        result = factory(builder, target, args)
        _check_integer_arithmetic(builder.rules[first_rule:], truth)
    except Unsupported as reason:
        unsupported.setdefault(f"{op_type} ({reason})", []).append(name)
        del builder.rules[first_rule:], builder.nodes[first_node:], builder.node_dtypes[first_node:]
        return _opaque(builder, call, truth)
    _check_against_truth(builder, result, truth)
    return result


def _opaque(builder: Builder, call: Callable[[], tuple | None] | None, truth: object) -> object:
    made = call() if call is not None and isinstance(truth, Tensor) else None
    if made is None:
        return _Opaque()
    function, variables, dtypes = made
    return builder.add(Opaque(function, dtypes, tuple(truth.shape)), variables)


def _per_sample_call(target, operands: tuple, env: dict, truth: dict) -> tuple | None:
    """(function of the variable operands' per-sample values that calls `target` with every
    operand in place, those variables, their dtypes in the model) for an Opaque node; None where
    an operand is not a plain variable or constant."""
    variables, dtypes = [], []

    def slot(argument):
        if not isinstance(argument, fx.Node):
            return argument
        value = env.get(argument)
        if isinstance(value, Value):
            variables.append(value)
            dtypes.append(torch.as_tensor(truth[argument]).dtype)
            return _Slot(len(variables) - 1)
        if any(isinstance(part, (Value, _Opaque)) for part in _flatten([value])):
            raise _NoCall  # several outputs of one node, or a placeholder: no per-sample call
        return value

    try:
        args, kwargs = fx.node.map_aggregate(operands, slot)
    except _NoCall:
        return None
    if not variables:
        return None

    def function(*values: Tensor) -> Tensor:
        fill = lambda a: values[a.index] if isinstance(a, _Slot) else a  # noqa: E731
        return target(*fx.node.map_aggregate(args, fill), **fx.node.map_aggregate(kwargs, fill))

    return function, variables, dtypes


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index


class _NoCall(Exception):
    pass


def _check_integer_arithmetic(rules: list[Rule], truth: object) -> None:
    """Refuse a node that onnxruntime computes in integers unless its rules give the same values
    (Rule.on_integers): sums with whole coefficients only in int64, where they cannot wrap."""
    dtypes = {t.dtype for t in (truth if isinstance(truth, (tuple, list)) else (truth,)) if isinstance(t, Tensor)}
    integer = [d for d in dtypes if not d.is_floating_point and d != torch.bool]
    if not integer:
        return
    kinds = {rule.on_integers() for rule in rules}
    if "no" in kinds or ("wraps" in kinds and integer != [torch.int64]):
        raise Unsupported(f"integer arithmetic in {integer[0]} (onnxruntime's integer results differ from real ones)")


def _check_against_truth(builder: Builder, result: object, truth: object) -> None:
    results = result if isinstance(result, tuple) else (result,)
    truths = truth if isinstance(truth, (tuple, list)) else (truth,)
    for got, expected in zip(results, truths):
        if not isinstance(got, Value):
            continue
        expected = torch.as_tensor(expected).detach().double()
        value = got.probe[0].detach().double()
        if value.shape != expected.shape:
            raise RuntimeError(f"{builder.label}: rule output shape {tuple(value.shape)} != {tuple(expected.shape)}")
        # Where the model itself gives inf or NaN at the probe (an overflow, a division by 0 at
        # the box centre) there is nothing to compare; the rule must not be the one that overflows.
        finite = torch.isfinite(expected)
        if not bool(torch.isfinite(value[finite]).all()):
            raise RuntimeError(f"{builder.label}: the rule overflows (inf or NaN) at the probe input where the "
                               "operator stays finite")
        expected, value = expected[finite], value[finite]
        scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
        # values computed in a narrower type (after a Cast) differ by that type's rounding
        narrowest = max(torch.finfo(builder.dtype).eps, torch.finfo(builder.exec_dtype).eps)
        tolerance = max(1e-4 if builder.dtype == torch.float32 else 1e-9, 64 * narrowest) * scale
        error = float((value - expected).abs().max()) if expected.numel() else 0.0
        if error > tolerance:
            raise RuntimeError(f"{builder.label}: rule disagrees with the operator by {error:.3g}")


def _call(module: fx.GraphModule, node: fx.Node,
          truth: dict[fx.Node, object]) -> tuple[object, tuple, dict, dict | None]:
    """The callable of a call node, its operands (positional, keyword) and, where the keywords
    were normalised, the keyword-only ones away from their defaults (None: not normalised).

    A method call `x.f(...)` is the unbound `Tensor.f`, or with keyword operands `torch.f(x, ...)`
    where torch has it, whose schema puts them in their positions (with the defaults before them
    filled in, found from the operands' types: torch's builtins have no Python signature); the
    keyword-only ones (a dtype, torch.add's alpha) stay keywords, for the truth's evaluation.
    """
    if node.op == "call_module":
        return module.get_submodule(node.target), node.args, node.kwargs, None
    target = node.target
    if node.op == "call_method":
        function = getattr(torch, node.target, None)
        target = function if callable(function) and node.kwargs else getattr(torch.Tensor, node.target)
    if not node.kwargs:
        return target, node.args, node.kwargs, {}
    def kind(value: object) -> type:
        value = truth[value] if isinstance(value, fx.Node) else value
        return Tensor if isinstance(value, Tensor) else type(value)

    try:
        normalized = normalize_function(target, node.args, node.kwargs,
                                        arg_types=tuple(kind(a) for a in node.args),
                                        kwarg_types={k: kind(v) for k, v in node.kwargs.items()},
                                        normalize_to_only_use_kwargs=True)
    except (RuntimeError, TypeError, ValueError):
        normalized = None
    if normalized is None:
        return target, node.args, node.kwargs, None
    names = list(normalized.kwargs)
    for signature in get_signature_for_torch_op(target) or [_signature(target)]:
        if signature is not None and list(signature.parameters) == names:
            keyword_only = {name for name, p in signature.parameters.items() if p.kind == p.KEYWORD_ONLY}
            changed = {name: value for name, value in normalized.kwargs.items()
                       if name in keyword_only and not _is_default(value, signature.parameters[name].default)}
            return (target, tuple(v for n, v in normalized.kwargs.items() if n not in keyword_only),
                    {n: v for n, v in normalized.kwargs.items() if n in keyword_only}, changed)
    return target, node.args, node.kwargs, None


def _is_default(value: object, default: object) -> bool:
    if value is default:
        return True
    try:
        return bool(value == default)
    except (TypeError, RuntimeError, ValueError):  # a tensor against a default
        return False


def _signature(target) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def _fetch_attr(module: torch.nn.Module, target: str) -> Tensor:
    value = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _positional(target, args: tuple, kwargs: dict) -> list:
    """The operands as one positional list, up to the last one given.

    onnx2torch passes the operands after a skipped optional input (Resize's empty roi, Slice's
    empty axes) by keyword: the skipped ones become their defaults, so that every later operand
    keeps its position (appending them would hand Resize's scales to its roi).
    """
    if not kwargs:
        return list(args)
    try:
        signature = inspect.signature(target.forward if hasattr(target, "forward") else target)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return list(args) + list(kwargs.values())
    names = list(signature.parameters)
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(signature.parameters[name].kind not in plain for name in names):
        return list(bound.args) + list(bound.kwargs.values())
    last = max(names.index(name) for name in bound.arguments)
    bound.apply_defaults()
    return [bound.arguments[name] for name in names[:last + 1]]


def _flatten(values) -> list:
    out = []
    for value in values:
        if isinstance(value, (tuple, list)):
            out.extend(_flatten(value))
        else:
            out.append(value)
    return out
