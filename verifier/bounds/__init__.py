"""The bound engine: operator rules by family, the graph they form, and IBP/CROWN over it.

Importing this package registers every operator family's rules.
"""

from verifier.onnx2torch_import import import_onnx2torch

import_onnx2torch()

from verifier.bounds import (  # noqa: E402,F401  (imported to register their rules)
    activation,
    arith,
    bilinear,
    linear,
    logic,
    pool,
    shape,
    smooth,
    softmax,
)
from verifier.bounds.core import factory_for, supported_onnx_ops  # noqa: E402

__all__ = ["factory_for", "supported_onnx_ops"]
