"""A sound neural-network verifier for ONNX models and VNN-LIB properties."""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version of the tool: the package metadata written from pyproject.toml
    __version__ = version("vnn-verifier")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["BoundedModule", "UserError", "__version__"]


def __getattr__(name: str) -> object:
    # the library's entry points import torch and the engine: only when asked for, so that
    # `verify --help` and the suite runner's parent process start fast
    if name == "BoundedModule":
        from verifier.api import BoundedModule
        return BoundedModule
    if name == "UserError":
        from verifier.errors import UserError
        return UserError
    raise AttributeError(f"module 'verifier' has no attribute '{name}'")
