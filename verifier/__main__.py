"""`python -m verifier` is the `verify` command."""

from verifier.cli import entry

entry()
