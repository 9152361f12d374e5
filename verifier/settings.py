"""Per-family settings: a small typed object, with defaults and overrides read from YAML."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from verifier.errors import UserError

if TYPE_CHECKING:
    from verifier.attack import AttackSettings
    from verifier.bounds.optimize import AlphaSettings
    from verifier.search import BranchSettings

# The methods of verifier.prove, named here so that the batch runner reads settings without torch.
BOUND_METHODS = ("ibp", "crown", "alpha-crown")
# What branch and bound splits after the bound pass: unstable ReLUs, the input box, or nothing.
BRANCHING = ("relu", "input", "none")

FAMILIES_FILE = Path(__file__).resolve().parent / "families.yaml"


@dataclass(frozen=True)
class Settings:
    """Everything that may differ between benchmark families."""

    bound_method: str = "alpha-crown"
    attack_random_samples: int = 256
    attack_restarts: int = 8
    attack_steps: int = 100
    attack_rounds: int = 4
    attack_step_fraction: float = 0.25
    attack_time_share: float = 0.3
    alpha_iterations: int = 20
    alpha_learning_rate: float = 0.1
    alpha_decay: float = 0.98
    alpha_intermediate: bool = True
    alpha_intermediate_memory_mb: float = 3072.0
    branching: str = "relu"
    branch_batch: int = 64
    branch_iterations: int = 10

    def attack(self) -> AttackSettings:
        # Imported here: the batch runner reads settings without loading torch.
        from verifier.attack import AttackSettings

        return AttackSettings(self.attack_random_samples, self.attack_restarts, self.attack_steps,
                              self.attack_rounds, self.attack_step_fraction)

    def alpha(self) -> AlphaSettings:
        from verifier.bounds.optimize import AlphaSettings

        return AlphaSettings(self.alpha_iterations, self.alpha_learning_rate, self.alpha_decay,
                             self.alpha_intermediate, self.alpha_intermediate_memory_mb)

    def branch(self) -> BranchSettings:
        from verifier.search import BranchSettings

        return BranchSettings(self.branch_batch, self.branch_iterations, self.alpha_learning_rate)


def load_settings(family: str | None, path: Path = FAMILIES_FILE) -> Settings:
    """Settings for a family: the file's `default` entry, then the family's own (unknown: defaults)."""
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UserError(str(path), f"cannot read the family settings ({error})") from None
    known = {f.name: f.type for f in fields(Settings)}
    settings = Settings()
    for name in ("default", family):
        entry = table.get(name) or {} if name else {}
        unknown = set(entry) - set(known)
        if unknown:
            raise UserError(str(path), f"unknown setting(s) for '{name}': {', '.join(sorted(unknown))}")
        settings = replace(settings, **entry)
    _validate(settings, str(path))
    return settings


def override(settings: Settings, assignments: list[str]) -> Settings:
    """Apply `KEY=VALUE` overrides (values parsed as YAML scalars) to `settings`."""
    known = {f.name: f for f in fields(Settings)}
    changes = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or key not in known:
            raise UserError("--set", f"'{assignment}' is not KEY=VALUE with KEY one of {', '.join(known)}")
        changes[key] = yaml.safe_load(text)
    settings = replace(settings, **changes)
    _validate(settings, "--set")
    return settings


def _validate(settings: Settings, source: str) -> None:
    if settings.bound_method not in BOUND_METHODS:
        raise UserError(source, f"bound_method must be one of {', '.join(BOUND_METHODS)}")
    if settings.branching not in BRANCHING:
        raise UserError(source, f"branching must be one of {', '.join(BRANCHING)}")
