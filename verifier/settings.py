"""Every setting of the verifier, in one typed tree: its type, default, allowed values and meaning.

The defaults are written here and nowhere else. `verifier/families.yaml` (or a user's file given
with `--settings`) holds only what a benchmark family changes; `--set KEY=VALUE` changes one key,
named by its dotted path (`alpha.iterations`, `branch.split`). Both are checked against this tree
where they are read, and a bad key or value is a one-line UserError naming the source.
This module imports no torch: the batch runner reads settings without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from verifier.errors import UserError

FAMILIES_FILE = Path(__file__).resolve().parent / "families.yaml"
# The methods of verifier.prove, named here so that the batch runner reads settings without torch.
BOUND_METHODS = ("ibp", "crown", "alpha-crown")
# what `verify bounds` and the library compute: also CROWN over IBP intermediate bounds, and
# forward-mode linear bounds
OUTPUT_METHODS = ("ibp", "crown", "crown-ibp", "forward", "alpha-crown")
# How a CROWN pass finds its intermediate bounds (verifier.bounds.intermediate).
INTERMEDIATE = ("auto", "backward", "forward", "both")
# What branch and bound splits after the bound pass: unstable ReLUs, the input box, or nothing.
SPLITS = ("auto", "relu", "input", "none")


def setting(default: Any, meaning: str, *, minimum: float | None = None, above: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its meaning and its allowed values (inclusive `minimum`/`maximum`,
    exclusive `above`, or one of `choices`)."""
    limits = {"meaning": meaning, "minimum": minimum, "above": above, "maximum": maximum, "choices": choices}
    return field(default=default, metadata=limits)


@dataclass(frozen=True)
class AttackSettings:
    """How hard the falsifier looks for a counterexample."""

    random_samples: int = setting(256, "random points per input box before PGD", minimum=0)
    restarts: int = setting(8, "PGD starts per (box, disjunct) and round", minimum=0)
    steps: int = setting(100, "PGD steps per round", minimum=0)
    rounds: int = setting(4, "PGD rounds before the bound pass (fresh random starts each)", minimum=1)
    step_fraction: float = setting(0.25, "first PGD step as a fraction of the box width", above=0, maximum=1)
    time_share: float = setting(0.3, "at most this share of the time left goes to the first attack",
                                minimum=0, maximum=1)


@dataclass(frozen=True)
class AlphaSettings:
    """alpha-CROWN: Adam on the relaxation parameters."""

    iterations: int = setting(20, "Adam steps on the relaxation parameters", minimum=0)
    learning_rate: float = setting(0.1, "Adam's learning rate", above=0)
    decay: float = setting(0.98, "learning-rate factor per step", above=0, maximum=1)
    patience: int = setting(6, "steps without a 1e-4 relative improvement before stopping early", minimum=1)
    intermediate: bool = setting(True, "also optimise the intermediate bounds' parameters ...")
    intermediate_memory_mb: float = setting(3072.0, "... when they fit in this memory (MiB), with gradients "
                                            "and saved sweeps", minimum=0)


@dataclass(frozen=True)
class BranchSettings:
    """Branch and bound after the bound pass."""

    split: str = setting("auto", "what to split: neurons, unstable ReLUs and sigmoid or tanh inputs (relu), "
                         "the input box (input), nothing (none), "
                         "or by the property (auto: the input box where it varies at most 8 inputs)",
                         choices=SPLITS)
    batch: int = setting(64, "domains split per step (their children are bounded together)", minimum=1)
    iterations: int = setting(10, "Adam steps on the final sweep's alpha and beta per step", minimum=0)
    learning_rate: float = setting(0.1, "Adam's learning rate for alpha and beta", above=0)
    decay: float = setting(0.98, "learning-rate factor per Adam step", above=0, maximum=1)
    candidates: int = setting(1, "ReLU splits: the best-scored neurons whose children one cheap sweep bounds "
                              "before the split (filtered smart branching; 1: the score alone)", minimum=1)
    leaf_lp: bool = setting(True, "domains with nothing left to split get each open row's betas from an LP (HiGHS)")
    memory_mb: float = setting(2048.0, "memory (MiB) the open domains may take before the search gives up",
                               above=0)


@dataclass(frozen=True)
class Settings:
    """Everything that may differ between benchmark families."""

    bound_method: str = setting("alpha-crown", "the bound pass after the attack (alpha-crown: CROWN, then "
                                "its optimised form)", choices=BOUND_METHODS)
    intermediate: str = setting("auto", "the intermediate bounds of CROWN passes: backward sweeps from every "
                                "neuron a relaxation needs (backward), forward-mode linear bounds (forward), "
                                "forward then backward sweeps on the neurons it leaves unstable (both), or "
                                "by the input (auto: with at most 64 inputs both, but forward alone in the sub-boxes "
                                "of input splitting where the sweeps cost over 8 forward passes; backward otherwise)",
                                choices=INTERMEDIATE)
    attack: AttackSettings = field(default_factory=AttackSettings)
    alpha: AlphaSettings = field(default_factory=AlphaSettings)
    branch: BranchSettings = field(default_factory=BranchSettings)


@dataclass(frozen=True)
class Key:
    """One leaf of the tree: its dotted name, type and field (with the limits in its metadata)."""

    name: str
    type: type
    field: dataclasses.Field

    @property
    def default(self) -> Any:
        return self.field.default

    @property
    def meaning(self) -> str:
        return self.field.metadata["meaning"]

    def allowed(self) -> str:
        """The allowed values in words, as error messages and `verify settings` print them."""
        limits = self.field.metadata
        if limits["choices"]:
            return "one of " + ", ".join(limits["choices"])
        if self.type is bool:
            return "true or false"
        words = {int: "an integer", float: "a number"}[self.type]
        bounds = [f">= {limits['minimum']:g}" if limits["minimum"] is not None else "",
                  f"> {limits['above']:g}" if limits["above"] is not None else "",
                  f"<= {limits['maximum']:g}" if limits["maximum"] is not None else ""]
        return " ".join([words, " and ".join(b for b in bounds if b)]).strip()

    def check(self, value: Any) -> Any:
        """`value` as this key's type; ValueError (with the allowed values) when it does not fit."""
        limits = self.field.metadata
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str) and value in limits["choices"]
        if ok and self.type in (int, float):
            ok = ((limits["minimum"] is None or value >= limits["minimum"])
                  and (limits["above"] is None or value > limits["above"])
                  and (limits["maximum"] is None or value <= limits["maximum"]))
        if not ok:
            raise ValueError(f"must be {self.allowed()}")
        return value

    def parse(self, text: str) -> Any:
        """A command-line value: the text read as this key's type, then checked."""
        try:
            if self.type is bool:
                value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text.lower()]
            elif self.type in (int, float):
                value = self.type(text)
            else:
                value = text
        except (KeyError, ValueError):
            raise ValueError(f"must be {self.allowed()}") from None
        return self.check(value)


def keys(tree: type = Settings, prefix: str = "") -> Iterator[Key]:
    """Every leaf of the settings tree, depth first, in declaration order."""
    hints = typing.get_type_hints(tree)
    for item in dataclasses.fields(tree):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            yield from keys(kind, f"{prefix}{item.name}.")
        else:
            yield Key(prefix + item.name, kind, item)


KEYS = {key.name: key for key in keys()}


def with_values(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """`settings` with the (already checked) dotted keys of `values` replaced."""
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for name, value in values.items():
        group, _, leaf = name.rpartition(".")
        if group:
            groups.setdefault(group, {})[leaf] = value
        else:
            top[leaf] = value
    for group, changes in groups.items():
        top[group] = dataclasses.replace(getattr(settings, group), **changes)
    return dataclasses.replace(settings, **top)


def flatten(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (YAML, JSON) as checked dotted keys; unknown keys and bad values raise UserError."""
    if not isinstance(tree, Mapping):
        raise UserError(source, f"'{prefix.rstrip('.') or 'the settings'}' must be a mapping of keys to values")
    values: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            values.update(flatten(value, source, dotted + "."))
            continue
        if dotted not in KEYS:
            raise UserError(source, f"unknown setting '{dotted}': {_unknown(dotted)}")
        try:
            values[dotted] = KEYS[dotted].check(value)
        except ValueError as error:
            raise UserError(source, f"{dotted}: {error}, got {value!r}") from None
    return values


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name.replace("_", "."), KEYS, n=1) or difflib.get_close_matches(name, KEYS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{hint}the keys are {', '.join(KEYS)}"


def from_mapping(tree: Mapping[str, Any], source: str) -> Settings:
    """Settings from a nested mapping such as `dataclasses.asdict(settings)` (checked)."""
    return with_values(Settings(), flatten(tree, source))


def read_families(path: Path = FAMILIES_FILE) -> dict[str, dict[str, Any]]:
    """The checked dotted-key changes of every family in a families file; `default` applies to all."""
    try:
        table = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(str(path), f"cannot read the settings file ({reason})") from None
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise UserError(str(path), "must map family names to their settings")
    return {str(family): flatten(entry or {}, f"{path}: family '{family}'") for family, entry in table.items()}


def family_settings(family: str | None, path: Path = FAMILIES_FILE) -> Settings:
    """The settings of `family`: the defaults, then the file's `default` entry, then the family's own."""
    table = read_families(path)
    settings = with_values(Settings(), table.get("default", {}))
    return with_values(settings, table.get(family, {})) if family else settings


def known_families(path: Path = FAMILIES_FILE) -> list[str]:
    return sorted(name for name in read_families(path) if name != "default")


def override(settings: Settings, assignments: list[str] | tuple[str, ...]) -> Settings:
    """Apply `KEY=VALUE` assignments (dotted keys, values read as the key's type)."""
    values = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--set {assignment}", "expected KEY=VALUE (`verify settings` lists the keys)")
        if name not in KEYS:
            raise UserError(f"--set {assignment}", f"unknown setting '{name}': {_unknown(name)}")
        try:
            values[name] = KEYS[name].parse(text.strip())
        except ValueError as error:
            raise UserError(f"--set {assignment}", f"{name} {error}") from None
    return with_values(settings, values)


def describe(settings: Settings) -> list[tuple[str, Any, str, str]]:
    """(key, value, allowed values, meaning) of every setting, for `verify settings`."""
    flat = {}
    for key in KEYS.values():
        value: Any = settings
        for part in key.name.split("."):
            value = getattr(value, part)
        flat[key.name] = value
    return [(key.name, flat[key.name], key.allowed(), key.meaning) for key in KEYS.values()]
