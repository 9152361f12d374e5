"""An instance opened for bounding: the property, the converted model, its bound network and spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from verifier.bounds.network import Network
from verifier.graph import build_network
from verifier.load import LoadedModel, load_for_verifying
from verifier.spec import Spec
from verifier.vnnlib import Property, parse_file


@dataclass
class Instance:
    prop: Property        # padded to the model's outputs
    model: LoadedModel
    network: Network | None  # None when the property has no input box (nothing to bound)
    spec: Spec | None


def open_instance(model_path: str, prop: str | Property, device: str = "cpu",
                  load: Callable[[str], LoadedModel] = load_for_verifying) -> Instance:
    """Parse the property (a file, or one already compiled), convert the model, check that their
    sizes agree and build the network.

    User errors (bad files, operators onnx2torch cannot convert, sizes that do not match) raise
    UserError; operators without a bound rule become Opaque nodes (`network.unbounded` names them).
    """
    prop = parse_file(prop) if isinstance(prop, str) else prop
    model = load(model_path)
    prop.check_sizes(model.num_inputs, model.num_outputs)
    prop.check_dtype("float32" if model.dtype == torch.float32 else "float64")
    prop = prop.padded_to_outputs(model.num_outputs)
    if not prop.cases:
        return Instance(prop, model, None, None)
    probe = torch.from_numpy((prop.cases[0].lower + prop.cases[0].upper) / 2)
    network = build_network(model, probe, opaque=True).to(device)
    network.real_arithmetic = prop.real_arithmetic
    return Instance(prop, model, network, Spec.build(prop, network.input_shape, network.dtype, device))
