"""A sound neural-network verifier for ONNX models and VNN-LIB properties."""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version of the tool: the package metadata written from pyproject.toml
    __version__ = version("vnn-verifier")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
