"""The settings tree: families file, --settings files and --set, each value checked with one-line errors."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from verifier.errors import UserError
from verifier.settings import (
    BOUND_METHODS,
    FAMILIES_FILE,
    KEYS,
    SPLITS,
    Settings,
    family_settings,
    flatten,
    from_mapping,
    known_families,
    override,
    read_families,
)
from verifier.spec import Spec
from verifier.verify import INPUT_SPLIT_DIMENSIONS, split_kind
from verifier.vnnlib import parse_text


def test_every_family_in_the_shipped_file_loads_with_valid_values():
    for family in [*known_families(), "no-such-family", None]:
        settings = family_settings(family)
        assert settings.bound_method in BOUND_METHODS and settings.branch.split in SPLITS
    assert family_settings("acasxu").branch.split == "input"
    assert family_settings("nn4sys").attack.restarts == 0
    assert family_settings("no-such-family") == family_settings(None) == Settings()


def test_overrides_are_read_as_the_key_type():
    settings = override(Settings(), ["branch.split=input", "branch.batch=8", "alpha.intermediate=false",
                                     "alpha.learning_rate=1e-2", "alpha.patience=3", "branch.decay=0.9",
                                     "alpha.intermediate_memory_mb=100", "branch.memory_mb=64"])
    assert (settings.branch.split, settings.branch.batch, settings.alpha.intermediate) == ("input", 8, False)
    assert (settings.alpha.learning_rate, settings.alpha.patience, settings.branch.decay) == (0.01, 3, 0.9)
    assert (settings.alpha.intermediate_memory_mb, settings.branch.memory_mb) == (100.0, 64.0)
    assert settings.attack == Settings().attack


# Every key with a value of the wrong type and one out of its range (or not among its choices).
WRONG = {int: ["abc", "1.5", "true"], float: ["abc", "nan", ""], bool: ["maybe", "2"], str: ["sideways", ""]}
OUT_OF_RANGE = {"attack.random_samples": "-1", "attack.restarts": "-3", "attack.steps": "-1", "attack.rounds": "0",
                "attack.step_fraction": "0", "attack.time_share": "1.5", "alpha.iterations": "-3",
                "alpha.learning_rate": "0", "alpha.decay": "1.01", "alpha.patience": "0",
                "alpha.intermediate_memory_mb": "-1", "branch.batch": "0", "branch.iterations": "-1",
                "branch.learning_rate": "-0.1", "branch.decay": "0", "branch.candidates": "0",
                "branch.memory_mb": "0"}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_set_rejects_every_wrong_type_and_range_naming_key_value_and_what_is_allowed(key):
    spec = KEYS[key]
    bad = WRONG[spec.type] + ([OUT_OF_RANGE[key]] if spec.type in (int, float) else [])
    for text in bad:
        with pytest.raises(UserError) as caught:
            override(Settings(), [f"{key}={text}"])
        message = str(caught.value)
        assert message.startswith(f"--set {key}={text}: {key} must be {spec.allowed()}"), message
        assert "\n" not in message


def test_every_numeric_key_has_a_range_and_every_text_key_its_choices():
    for key in KEYS.values():
        limits = key.field.metadata
        if key.type in (int, float):
            assert limits["minimum"] is not None or limits["above"] is not None, key.name
        if key.type is str:
            assert limits["choices"], key.name
        assert key.meaning, key.name


@pytest.mark.parametrize("assignment", ["nosuch=1", "alpha_iterations=3", "branching", "alpha.nosuch=2", "=3"])
def test_unknown_keys_and_missing_values_are_user_errors(assignment):
    with pytest.raises(UserError, match=r"^--set "):
        override(Settings(), [assignment])


def test_an_old_flat_key_gets_a_hint():
    with pytest.raises(UserError, match="did you mean alpha.iterations"):
        override(Settings(), ["alpha_iterations=3"])


@pytest.mark.parametrize("text, message", [
    ("mnistfc:\n  branch:\n    depth: 3\n", "unknown setting 'branch.depth'"),
    ("mnistfc:\n  alpha:\n    iterations: -3\n", "alpha.iterations: must be an integer >= 0, got -3"),
    ("mnistfc:\n  alpha:\n    iterations: abc\n", "alpha.iterations: must be an integer >= 0, got 'abc'"),
    ("mnistfc:\n  alpha:\n    iterations: 2.5\n", "alpha.iterations: must be an integer >= 0"),
    ("mnistfc:\n  alpha:\n    intermediate: maybe\n", "alpha.intermediate: must be true or false"),
    ("mnistfc:\n  alpha:\n    intermediate: 1\n", "alpha.intermediate: must be true or false"),
    ("mnistfc:\n  branch:\n    split: sideways\n", "branch.split: must be one of auto, relu, input, none"),
    ("mnistfc:\n  bound_method: lp\n", "bound_method: must be one of ibp, crown, alpha-crown"),
    ("mnistfc:\n  attack: 3\n", "unknown setting 'attack'"),
    ("mnistfc:\n  alpha:\n    decay: .nan\n", "alpha.decay: must be a number > 0 and <= 1"),
    ("- a\n- b\n", "must map family names to their settings"),
    ("mnistfc: [1, 2]\n", "must be a mapping of keys to values"),
    ("mnistfc:\n  alpha: {iterations: 3\n", "cannot read the settings file"),
])
def test_a_user_settings_file_is_checked_the_same_way(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        family_settings("mnistfc", path)
    assert message in str(caught.value) and str(caught.value).startswith(str(path))


def test_a_user_settings_file_replaces_the_shipped_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("default:\n  alpha:\n    iterations: 7\nmnistfc:\n  branch:\n    batch: 5\n")
    assert family_settings("mnistfc", path).alpha.iterations == 7
    assert family_settings("mnistfc", path).branch.batch == 5
    assert family_settings("acasxu", path).branch.split == "auto"  # the shipped acasxu entry is not used
    assert known_families(path) == ["mnistfc"]


def test_settings_survive_the_round_trip_through_the_workers_json():
    settings = override(family_settings("acasxu"), ["alpha.patience=2"])
    assert from_mapping(json.loads(json.dumps(dataclasses.asdict(settings))), "task") == settings
    with pytest.raises(UserError, match="alpha.patience"):
        from_mapping({"alpha": {"patience": 0}}, "task")


def _literal_defaults(path: Path, names: set[str]) -> list[str]:
    """`name: type = <literal>` class fields and `name=<literal>` keyword defaults in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names \
                and isinstance(node.value, ast.Constant):
            found.append(f"{path.name}:{node.lineno} {node.target.id}")
    return found


def test_each_default_is_written_in_one_place():
    # The tree is the only place: no other settings classes in the package, and no family entry
    # that restates a default (it would be a second place to keep in step).
    leaf_names = {name.rpartition(".")[2] for name in KEYS}
    elsewhere = []
    for path in sorted((REPO / "verifier").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py")):
        if path.name != "settings.py":
            elsewhere += _literal_defaults(path, leaf_names)
            source = path.read_text()
            elsewhere += [f"{path.name} defines {name}" for name in ("class AttackSettings", "class AlphaSettings",
                                                                     "class BranchSettings") if name in source]
    assert elsewhere == []
    restated = [f"{family}: {key}" for family, values in read_families().items() for key, value in values.items()
                if value == KEYS[key].default]
    assert restated == []
    shipped = yaml.safe_load(FAMILIES_FILE.read_text())
    assert "default" not in shipped  # the defaults live in verifier/settings.py
    assert flatten(shipped["acasxu"], "x")  # the file uses the tree's nested form


def test_the_settings_command_lists_every_key(capsys):
    from verifier import cli

    assert cli.main(["settings", "--family", "acasxu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(KEYS)
    assert any(line.split()[:2] == ["branch.split", "input"] for line in out)
    assert cli.main(["settings", "--json", "--set", "alpha.patience=2"]) == 0
    assert json.loads(capsys.readouterr().out)["alpha"]["patience"] == 2


def test_automatic_splitting_halves_the_input_box_where_few_inputs_vary():
    def spec_varying(count: int, total: int = 20) -> Spec:
        text = "".join(f"(declare-const X_{i} Real)" for i in range(total)) + "(declare-const Y_0 Real)"
        text += "".join(f"(assert (>= X_{i} 0))(assert (<= X_{i} {1 if i < count else 0}))" for i in range(total))
        return Spec.build(parse_text(text + "(assert (<= Y_0 0))"), (1, total), torch.float32)

    assert split_kind(spec_varying(INPUT_SPLIT_DIMENSIONS), "auto") == "input"
    assert split_kind(spec_varying(INPUT_SPLIT_DIMENSIONS + 1), "auto") == "relu"
    assert split_kind(spec_varying(1), "relu") == "relu"
