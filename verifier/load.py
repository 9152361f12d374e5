"""ONNX file -> torch.fx GraphModule, with the fixes that competition models need.

The fixes (see shared/docs/onnx-loader-notes.md): a torchvision guard, unique node names, no
trailing empty optional inputs, an opset upgrade when direct conversion fails, batch-1 Reshape
constants made batch-agnostic, eval mode, float64 models kept in float64, `.onnx.gz` read in
memory, and nothing ever written beside the input file. Before conversion, every operator on a
path from the input that no bound rule registers is named in one error.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from verifier.errors import ModelError, first_line
from verifier.onnx2torch_import import import_onnx2torch

UPGRADE_OPSET = 17
_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64}
# Float types a value inside the graph may have (onnxruntime computes the node in that type).
_VALUE_DTYPES = {**_DTYPES, onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16}


@dataclass
class LoadedModel:
    """A converted model and what the verifier needs to know about its interface.

    The input shape is the ONNX-declared one with symbolic dimensions read as 1; the output shape
    is the declared one where every dimension is declared, else the one ONNX shape inference gives
    for that input shape, else the one onnxruntime gives on a sample input. `dtype` is the input's.
    `onnx_nodes` maps an fx module target to its ONNX (op_type, node name), for messages;
    `node_dtypes` an ONNX node name to the float type of its output (what onnxruntime computes
    it in), where shape inference knows it.
    """

    path: str
    module: torch.fx.GraphModule
    input_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: torch.dtype
    onnx_nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    node_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    # per-sample shapes of the module's further inputs (a traced module's; ONNX models have one)
    extra_input_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def num_inputs(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64))

    @property
    def num_outputs(self) -> int:
        return int(np.prod(self.output_shape, dtype=np.int64))


def read_onnx_bytes(path: str) -> bytes:
    """The model's bytes, gunzipped in memory when the file is gzip-compressed."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ModelError(path, f"cannot read the file ({error.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ModelError(path, f"corrupt gzip data ({error})") from None
    return raw


def parse_onnx(path: str) -> onnx.ModelProto:
    """Parse the file into a ModelProto, or raise ModelError."""
    raw = read_onnx_bytes(path)
    if not raw:
        raise ModelError(path, "the file is empty")
    try:
        model = onnx.load_from_string(raw)
    except Exception:  # noqa: BLE001 - protobuf raises several unrelated types
        raise ModelError(path, "not a valid ONNX model (protobuf parsing failed)") from None
    if not model.graph.node:
        raise ModelError(path, "not a valid ONNX model (the graph has no nodes)")
    return model


def graph_io(model: onnx.ModelProto, path: str) -> tuple[str, tuple[int, ...], torch.dtype, tuple[int, ...]]:
    """Name, shape and dtype of the single real input, and the shape of the single output (see LoadedModel)."""
    inputs = graph_inputs(model.graph)
    if len(inputs) != 1:
        raise ModelError(path, f"the model has {len(inputs)} inputs; only single-input models are supported")
    if len(model.graph.output) != 1:
        count = len(model.graph.output)
        raise ModelError(path, f"the model has {count} outputs; only single-output models are supported")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type not in _DTYPES:
        name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ModelError(path, f"input element type {name} is unsupported (float32 or float64 only)")
    input_shape, dtype = _declared_shape(inputs[0]), _DTYPES[tensor_type.elem_type]
    output_shape = _static_shape(model.graph.output[0])
    if output_shape is None:
        output_shape = _inferred_output_shape(model, path, inputs[0].name, input_shape, dtype)
    return inputs[0].name, input_shape, dtype, output_shape


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: those that no initializer gives (old exporters list weights too)."""
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def _declared_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The declared shape when it is declared and every dimension is a number, else None."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _inferred_output_shape(model: onnx.ModelProto, path: str, input_name: str, input_shape: tuple[int, ...],
                           dtype: torch.dtype) -> tuple[int, ...]:
    """The output's shape for an input of `input_shape`: ONNX shape inference, else one onnxruntime run."""
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for value in static.graph.input:
        if value.name == input_name:
            value.type.tensor_type.shape.Clear()
            for size in input_shape:
                value.type.tensor_type.shape.dim.add().dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(static)
        shape = _static_shape(inferred.graph.output[0])
    except Exception:  # noqa: BLE001 - inference is only the cheap way; running the model decides
        shape = None
    if shape is not None:
        return shape
    import onnxruntime

    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    sample = np.random.default_rng(0).random(input_shape).astype(np_dtype)
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(static.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        output = session.run([model.graph.output[0].name], {input_name: sample})[0]
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelError(path, "the output's shape is not declared and running the model on a sample input "
                         f"failed: {type(error).__name__}: {first_line(error)}") from None
    return tuple(int(size) for size in np.shape(output))


def load_model(path: str, opaque: bool = False) -> LoadedModel:
    """Load and convert an ONNX model; user-caused problems raise ModelError (one line). Operators
    without a bound rule are refused here unless `opaque` (the graph builder then stands an
    Opaque node in for each), where only those onnx2torch cannot convert are."""
    original = parse_onnx(path)
    input_name, input_shape, dtype, output_shape = graph_io(original, path)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    _make_node_names_unique(model)
    _strip_empty_trailing_inputs(model)
    _constants_as_initializers(model)
    _separate_multi_output_results(model)
    _explicit_same_pads(model)
    if not opaque:
        unbounded = _unbounded_operators(model, input_name)
        if unbounded:
            raise ModelError(path, f"unsupported operators: {describe_unsupported(unbounded)}")
    onnx2torch = import_onnx2torch()
    _register_extra_converters()
    module = None
    if not _missing_converters(model):
        try:
            module = onnx2torch.convert(model)
        except Exception:  # noqa: BLE001 - retried after the opset upgrade below
            module = None
    if module is None:
        model = _upgraded(model, path)
        missing = _missing_converters(model)
        if missing:
            raise ModelError(path, f"unsupported operators: {', '.join(sorted(missing))}")
        try:
            module = onnx2torch.convert(model)
        except Exception as error:  # noqa: BLE001
            raise ModelError(path, f"conversion to torch failed: {type(error).__name__}: {first_line(error)}") from None
    module = _batchified(model, onnx2torch, module)
    # the bound rules hold the module's own weights: the verifier never needs their gradients
    module.eval().requires_grad_(False)
    nodes = {(n.name.replace(".", "/") or n.op_type): (n.op_type, n.name) for n in model.graph.node}
    return LoadedModel(path, module, input_name, input_shape, output_shape, dtype, nodes, _node_dtypes(model))


def load_for_verifying(path: str) -> LoadedModel:
    """`load_model` as `verify` uses it: operators without a rule become Opaque nodes."""
    return load_model(path, opaque=True)


def _node_dtypes(model: onnx.ModelProto) -> dict[str, torch.dtype]:
    """ONNX node name -> float type of its first output, from the declared and inferred types."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort; declared types still count
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return {node.name: _VALUE_DTYPES[types[node.output[0]]] for node in graph.node
            if node.output and types.get(node.output[0]) in _VALUE_DTYPES}


def _unbounded_operators(model: onnx.ModelProto, input_name: str) -> dict[str, list[str]]:
    """Node names by op type, for every node on a path from the input that no bound rule covers.

    Nodes off every such path compute constants, which the graph builder folds: they need no
    rule. Shape ends a path, since per-sample shapes are static (the builder folds it too).
    The builder still refuses uses that a registered rule cannot bound.
    """
    from verifier.bounds import supported_onnx_ops  # here: witness.py reads files without the engine

    supported = supported_onnx_ops()
    variable = {input_name}
    found: dict[str, list[str]] = {}
    for node in model.graph.node:  # ONNX graphs list their nodes in topological order
        if not any(name in variable for name in node.input):
            continue
        default_domain = node.domain in ("", "ai.onnx")
        op_type = node.op_type if default_domain else f"{node.domain}.{node.op_type}"
        if op_type not in supported:
            found.setdefault(op_type, []).append(node.name)
        if not (default_domain and node.op_type == "Shape"):
            variable.update(node.output)
    return found


def describe_unsupported(nodes: dict[str, list[str]]) -> str:
    """`op (nodes: a, b, c ...); ...` for unsupported op types and their nodes."""
    return "; ".join(f"{op} (nodes: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''})"
                     for op, names in sorted(nodes.items()))


def _make_node_names_unique(model: onnx.ModelProto) -> None:
    """Give every node a distinct, non-empty name (onnx2torch silently drops colliding ones)."""
    taken: set[str] = set()
    counters: dict[str, int] = {}
    for node in model.graph.node:
        name = node.name
        if not name or name in taken or name.replace(".", "/") in taken:
            base = node.name or node.op_type
            while True:
                counters[base] = counters.get(base, 0) + 1
                name = f"{base}_{counters[base]}"
                if name not in taken:
                    break
        node.name = name
        taken.add(name)
        taken.add(name.replace(".", "/"))


def _constants_as_initializers(model: onnx.ModelProto) -> None:
    """Turn Constant nodes into initializers: onnx2torch reads the weights of Conv, Gemm and
    BatchNormalization (and Split's sizes) only from initializers, and exporters such as
    onnxscript write them as Constant nodes."""
    kept = []
    for node in model.graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None:
            kept.append(node)
        else:
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    if len(kept) < len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)


def _separate_multi_output_results(model: onnx.ModelProto) -> None:
    """Route a graph output that one output of a multi-output node (Split) gives through an
    Identity: onnx2torch returns the node's whole tuple for it otherwise."""
    for name in dict.fromkeys(value.name for value in model.graph.output):
        position = next((i for i, node in enumerate(model.graph.node) if name in node.output), None)
        if position is None or len(model.graph.node[position].output) < 2:
            continue
        node = model.graph.node[position]
        inner = f"{name}__part"
        node.output[list(node.output).index(name)] = inner
        # right after its producer, so that the nodes stay in topological order
        model.graph.node.insert(position + 1, onnx.helper.make_node("Identity", [inner], [name],
                                                                    name=f"{name}__identity"))


def _explicit_same_pads(model: onnx.ModelProto) -> None:
    """Replace `auto_pad` SAME_UPPER / SAME_LOWER of Conv and pooling nodes by the explicit pads it
    stands for (onnx2torch implements only explicit ones), where shape inference gives the input's
    spatial size; ConvTranspose, whose SAME pads depend on its output size, is left as it is.
    Output size ceil(in / stride); the odd pad goes at the end for SAME_UPPER, at the start for
    SAME_LOWER."""
    nodes = [n for n in model.graph.node if any(a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER")
                                                for a in n.attribute)]
    if not nodes:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - left as it is: the conversion names the problem
        return
    shapes = {v.name: _static_shape(v) for v in [*inferred.graph.value_info, *inferred.graph.input]}
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in nodes:
        shape = shapes.get(node.input[0])
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if shape is None or node.op_type == "ConvTranspose":
            continue
        spatial = shape[2:]
        if "kernel_shape" in attributes:
            kernel = list(attributes["kernel_shape"])
        elif len(node.input) > 1 and node.input[1] in weights:
            kernel = list(weights[node.input[1]][2:])
        else:
            continue
        strides = list(attributes.get("strides", [1] * len(spatial)))
        dilations = list(attributes.get("dilations", [1] * len(spatial)))
        begin, end = [], []
        for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
            small, large = total // 2, total - total // 2
            first, last = (small, large) if attributes["auto_pad"] == b"SAME_UPPER" else (large, small)
            begin.append(first)
            end.append(last)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("pads", begin + end))


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None for the kinds onnx2torch keeps as nodes (sparse, strings)."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_floats"):
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=np.float32)
        if attribute.name in ("value_int", "value_ints"):
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=np.int64)
    return None


def _strip_empty_trailing_inputs(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _missing_converters(model: onnx.ModelProto) -> set[str]:
    """Every operator of the model that onnx2torch has no converter for at the model's opset."""
    from onnx2torch.node_converters.registry import get_converter

    missing = set()
    version = default_opset(model)
    for node in model.graph.node:
        try:
            get_converter(operation_type=node.op_type, version=version, domain=node.domain or "")
        except NotImplementedError:
            missing.add(f"{node.domain + '.' if node.domain else ''}{node.op_type}")
    return missing


def _register_extra_converters() -> None:
    """Converters onnx2torch lacks (OneHot; Split at opset 18, which splits an uneven axis into
    chunks of ceil(length / outputs)), registered once."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    from verifier.bounds.logic import OnnxOneHot
    from verifier.bounds.shape import OnnxSplit18

    if OperationDescription("", "Split", 18) not in _CONVERTER_REGISTRY:

        @add_converter(operation_type="Split", version=18)
        def _split(node, graph):  # noqa: ARG001
            module = OnnxSplit18(axis=node.attributes.get("axis", 0), num_splits=len(node.output_values))
            return OperationConverterResult(module, onnx_mapping_from_node(node))

    for version in (9, 11):
        if OperationDescription("", "OneHot", version) in _CONVERTER_REGISTRY:
            continue

        @add_converter(operation_type="OneHot", version=version)
        def _one_hot(node, graph):  # noqa: ARG001
            return OperationConverterResult(OnnxOneHot(node.attributes.get("axis", -1)), onnx_mapping_from_node(node))


def _upgraded(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """The model converted to opset UPGRADE_OPSET: up from old opsets, and down from the newer
    ones that torch's exporter writes (20 in torch 2.13), for which onnx2torch lacks converters."""
    if default_opset(model) == UPGRADE_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception as error:  # noqa: BLE001
        reason = f"{type(error).__name__}: {first_line(error)}"
        raise ModelError(path, f"opset conversion to {UPGRADE_OPSET} failed: {reason}") from None
    _make_node_names_unique(upgraded)
    _strip_empty_trailing_inputs(upgraded)
    return upgraded


def _batchified(model: onnx.ModelProto, onnx2torch, module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite Reshape constants that hard-code batch 1, so that the module also runs on batches."""
    rewritten = _batchify_reshapes(model)
    if rewritten is None:
        return module
    try:
        return onnx2torch.convert(rewritten)
    except Exception:  # noqa: BLE001 - keep the batch-1 module, which is all the engine needs
        return module


def _batchify_reshapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy with `Reshape(x, [1, ...])` on batch-1 `x` turned into `[-1, ...]`, or None if none apply."""
    constants = {init.name: init for init in model.graph.initializer}
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in constants]
    if not reshapes:
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return None
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in values}
    replacements = {}
    for node in reshapes:
        target = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
        data_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
        if target.ndim != 1 or target.size < 2 or target[0] != 1 or not data_shape or data_shape[0] != 1:
            continue
        if not out_shape or len(out_shape) != target.size:
            continue
        new = target.copy()
        new[0] = -1
        rest_ok = True
        for i in range(1, new.size):
            if new[i] == -1:
                if out_shape[i] is None:
                    rest_ok = False
                new[i] = out_shape[i] or -1
        if rest_ok:
            replacements[node.name] = new
    if not replacements:
        return None
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    for index, node in enumerate(rewritten.graph.node):
        if node.name in replacements:
            name = f"{node.input[1]}__batchified_{index}"
            rewritten.graph.initializer.append(numpy_helper.from_array(replacements[node.name], name))
            node.input[1] = name
    return rewritten
