"""One ONNX model for a VNN-LIB 2.0 query: every network it names, fed from one flat input.

`compose(query, observables, models, paths)` builds a model with input `x` (every network's inputs in
declaration order, flat) and output `z` (the observables: tensor elements and their products,
see `vnnlib.query`; then x[0], so that z always depends on x). The engine, the falsifier and
the onnxruntime check then see a single-input, single-output model, and a query over several
networks is bounded as one graph. Each network's
graph is copied in under its own name prefix; an `equal-to` network is a second copy of its
target's file. `evaluate` runs the original models, each on its own, for the final check of a
counterexample and for the assignment printed with `sat`. `read_networks` parses each file once
for all of these.

Errors of section 5.3.2 of the standard (a missing or unneeded `--network`, element types that
differ from the declared ones, types that cannot be analysed soundly) raise QueryError.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from verifier.errors import UserError
from verifier.load import default_opset, graph_inputs, parse_onnx
from verifier.vnnlib.query import Observable, Query, Tensor

# Declared types the engine analyses soundly (the others must be declared `real`).
SOUND_TYPES = ("float32", "float64", "int64", "int32", "bool")
_ONNX_TYPES = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
               "bfloat16": TensorProto.BFLOAT16, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
               "int32": TensorProto.INT32, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8,
               "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
               "bool": TensorProto.BOOL}
_FLOAT_INPUTS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
MIN_OPSET = 13  # Slice, Gather, Concat and Reshape as used below, and Split with its sizes as an input


class QueryError(UserError):
    """A query that the networks given cannot answer (section 5.3.2 of the standard)."""


def model_paths(query: Query, given: dict[str, str]) -> dict[str, str]:
    """The ONNX file of every network: its `--network` mapping, or for `equal-to` its target's."""
    needed = [n.name for n in query.networks if n.relation is None or n.relation[0] != "equal-to"]
    missing = [name for name in needed if name not in given]
    unneeded = [name for name in given if name not in needed]
    if missing:
        raise QueryError(query.path, f"no --network NAME=PATH for network {', '.join(missing)}")
    if unneeded:
        declared = {n.name for n in query.networks}
        reason = "is equal-to another network (it takes that one's model)" if unneeded[0] in declared else \
            "is not declared by the query"
        raise QueryError(query.path, f"--network {unneeded[0]} {reason}")
    paths = dict(given)
    for network in query.networks:
        if network.name not in paths:
            paths[network.name] = paths[network.relation[1]]
    return paths


def check_types(query: Query) -> None:
    """Refuse declared types that the engine cannot analyse soundly (unless the query is in `real`)."""
    for tensor in query.tensors.values():
        if tensor.dtype != "real" and tensor.dtype not in SOUND_TYPES:
            raise QueryError(f"{query.path}:{tensor.line}", f"{tensor.name} is declared {tensor.dtype}, which this "
                             f"verifier cannot analyse soundly (it can: {', '.join(SOUND_TYPES)}); declare the "
                             "query's tensors `real` to accept an analysis in float arithmetic")


def read_networks(query: Query, paths: dict[str, str]) -> dict[str, onnx.ModelProto]:
    """Every network's model, each file parsed once (an `equal-to` network shares its target's)."""
    parsed: dict[str, onnx.ModelProto] = {}
    for path in dict.fromkeys(paths.values()):
        parsed[path] = parse_onnx(path)
    return {n.name: parsed[paths[n.name]] for n in query.networks}


def input_types(query: Query, models: dict[str, onnx.ModelProto]) -> dict[str, str]:
    """The ONNX element type of every declared input (float16, float32 or float64 where it is one)."""
    types = {}
    for network in query.networks:
        for tensor, value in zip(network.inputs, graph_inputs(models[network.name].graph)):
            types[tensor.name] = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
    return types


def compose(query: Query, observables: list[Observable], models: dict[str, onnx.ModelProto],
            paths: dict[str, str]) -> onnx.ModelProto:
    """The single model x -> z of the query (see the module docstring); `paths` name the files."""
    opset = max(MIN_OPSET, *(default_opset(m) for m in models.values()))
    # x and z are float64 only when every network's inputs are
    input_types = {value.type.tensor_type.elem_type for m in models.values() for value in graph_inputs(m.graph)}
    flat_type = TensorProto.DOUBLE if input_types == {TensorProto.DOUBLE} else TensorProto.FLOAT
    nodes, initializers, values = [], [], {}
    start = 0
    extra_opsets: dict[str, int] = {}
    for network in query.networks:
        model = _at_opset(models[network.name], opset, paths[network.name])
        prefix = f"{network.name}__"
        graph = _prefixed(model.graph, prefix, paths[network.name])
        inputs, outputs = graph_inputs(graph), list(graph.output)
        _check_interface(query, network.inputs, inputs, "input", paths[network.name])
        _check_interface(query, network.outputs, outputs, "output", paths[network.name])
        for tensor, value in zip(network.inputs, inputs):
            begin, end = start, start + tensor.size
            start = end
            bounds = [_constant(initializers, f"{prefix}{tensor.name}__{side}", np.array([v], dtype=np.int64))
                      for side, v in (("begin", begin), ("end", end))]
            shape = _constant(initializers, f"{prefix}{tensor.name}__shape",
                              np.array(tensor.shape, dtype=np.int64))
            nodes.append(helper.make_node("Slice", ["x", *bounds], [f"{value.name}__flat"]))
            nodes.append(helper.make_node("Reshape", [f"{value.name}__flat", shape], [f"{value.name}__shaped"]))
            nodes.append(helper.make_node("Cast", [f"{value.name}__shaped"], [value.name],
                                          to=value.type.tensor_type.elem_type))
            values[tensor.name] = value.name
        initializers.extend(graph.initializer)
        nodes.extend(graph.node)
        for tensor, value in zip(network.outputs, outputs):
            values[tensor.name] = value.name
        produced = {name for node in graph.node for name in node.output}
        for tensor in network.hidden:
            name = prefix + tensor.onnx_name
            if name not in produced:
                raise QueryError(f"{query.path}:{tensor.line}", f"the hidden tensor \"{tensor.onnx_name}\" of "
                                 f"{tensor.name} is not computed by {paths[network.name]}")
            values[tensor.name] = name
        for entry in model.opset_import:
            if entry.domain not in ("", "ai.onnx"):
                extra_opsets[entry.domain] = max(extra_opsets.get(entry.domain, 1), entry.version)
    parts = []
    flats: dict[str, str] = {}
    for k, observable in enumerate(observables):
        factors = []
        for name, index in observable.elements:
            if name not in flats:
                flats[name] = f"{values[name]}__z"
                shape = _constant(initializers, f"{values[name]}__minus_one", np.array([-1], dtype=np.int64))
                nodes.append(helper.make_node("Reshape", [values[name], shape], [f"{values[name]}__line"]))
                nodes.append(helper.make_node("Cast", [f"{values[name]}__line"], [flats[name]], to=flat_type))
            picked = _constant(initializers, f"z{k}__{name}_{index}__at", np.array([index], dtype=np.int64))
            factors.append(f"z{k}__{name}_{index}")
            nodes.append(helper.make_node("Gather", [flats[name], picked], [factors[-1]], axis=0))
        product = factors[0]
        for j, factor in enumerate(factors[1:]):
            nodes.append(helper.make_node("Mul", [product, factor], [f"z{k}__product{j}"]))
            product = f"z{k}__product{j}"
        parts.append(product)
    # z ends with x[0], which no row reads: z depends on x even where every observable is a
    # constant (a Shape), as the engine needs
    anchor = _constant(initializers, "x__anchor_at", np.array([0], dtype=np.int64))
    nodes.append(helper.make_node("Gather", ["x", anchor], ["x__anchor"], axis=0))
    nodes.append(helper.make_node("Concat", [*parts, "x__anchor"], ["z"], axis=0))
    graph = helper.make_graph(nodes, "query", [helper.make_tensor_value_info("x", flat_type, [start])],
                              [helper.make_tensor_value_info("z", flat_type, [len(observables) + 1])], initializers)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets.items())]
    return helper.make_model(graph, opset_imports=opsets, producer_name="verifier.compose")


def evaluate(query: Query, models: dict[str, onnx.ModelProto], flat_inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every declared tensor's value (flat) for the flat inputs x, each network's own model run
    by onnxruntime, its hidden tensors made outputs of a copy."""
    import onnxruntime

    values: dict[str, np.ndarray] = {}
    start = 0
    for network in query.networks:
        model = onnx.ModelProto()
        model.CopyFrom(models[network.name])
        inputs = graph_inputs(model.graph)
        feed = {}
        for tensor, value in zip(network.inputs, inputs):
            part = flat_inputs[start:start + tensor.size]
            start += tensor.size
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            feed[value.name] = np.asarray(part).astype(dtype).reshape(tensor.shape)
            values[tensor.name] = feed[value.name].reshape(-1)
        names = [v.name for v in model.graph.output[:len(network.outputs)]]
        for tensor in network.hidden:
            if tensor.onnx_name not in names:
                model.graph.output.append(helper.make_empty_tensor_value_info(tensor.onnx_name))
            names.append(tensor.onnx_name)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results = session.run(names, feed)
        for tensor, result in zip([*network.outputs, *network.hidden], results):
            values[tensor.name] = np.asarray(result).reshape(-1)
    return values


def _check_interface(query: Query, declared: list[Tensor], actual: list[onnx.ValueInfoProto], role: str,
                     path: str) -> None:
    if len(declared) != len(actual):
        raise QueryError(query.path, f"network {declared[0].network} declares {len(declared)} {role}(s) but "
                         f"{path} has {len(actual)}")
    for tensor, value in zip(declared, actual):
        elem = value.type.tensor_type.elem_type
        if tensor.dtype != "real" and _ONNX_TYPES.get(tensor.dtype) != elem:
            raise QueryError(f"{query.path}:{tensor.line}", f"{tensor.name} is declared {tensor.dtype} but the {role} "
                             f"of {path} is {TensorProto.DataType.Name(elem).lower()}")
        if role == "input" and elem not in _FLOAT_INPUTS:
            raise QueryError(f"{query.path}:{tensor.line}", f"the input of {path} is "
                             f"{TensorProto.DataType.Name(elem).lower()} (float32 or float64 inputs only)")
        dims = value.type.tensor_type.shape.dim if value.type.tensor_type.HasField("shape") else None
        if dims is not None:
            static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            fits = len(static) == len(tensor.shape) and all(s is None or s == d for s, d in zip(static, tensor.shape))
            if not fits:
                shown = ",".join("?" if s is None else str(s) for s in static)
                raise QueryError(f"{query.path}:{tensor.line}", f"{tensor.name} is declared "
                                 f"[{','.join(map(str, tensor.shape))}] but the {role} of {path} has shape [{shown}]")


def _at_opset(model: onnx.ModelProto, opset: int, path: str) -> onnx.ModelProto:
    if default_opset(model) == opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as error:  # noqa: BLE001 - onnx raises several types
        raise QueryError(path, f"cannot bring the model to opset {opset}, the highest of the query's networks "
                         f"({type(error).__name__})") from None


def _prefixed(graph: onnx.GraphProto, prefix: str, path: str) -> onnx.GraphProto:
    """A copy of `graph` with every value and node name prefixed (subgraphs are refused)."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)

    def rename(name: str) -> str:
        return prefix + name if name else name

    for node in copy.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise QueryError(path, f"node {node.name or node.op_type} has a subgraph ({node.op_type}), which is "
                             "unsupported")
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = rename(node.name or node.op_type)
    for collection in (copy.input, copy.output, copy.value_info):
        for value in collection:
            value.name = rename(value.name)
    for init in copy.initializer:
        init.name = rename(init.name)
    return copy


def _constant(initializers: list, name: str, value: np.ndarray) -> str:
    initializers.append(numpy_helper.from_array(value, name))
    return name
