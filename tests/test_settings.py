"""Per-family settings: the YAML file, overrides, and one-line errors for bad values."""

from __future__ import annotations

import pytest

from verifier.errors import UserError
from verifier.settings import BOUND_METHODS, BRANCHING, Settings, load_settings, override


def test_every_family_in_the_file_loads_with_valid_values():
    for family in ("acasxu", "nn4sys", "mnistfc", "no-such-family", None):
        settings = load_settings(family)
        assert settings.bound_method in BOUND_METHODS and settings.branching in BRANCHING
    assert load_settings("acasxu").branching == "input"
    assert load_settings("nn4sys").branching == "none"
    assert load_settings("no-such-family") == load_settings(None)


def test_overrides_parse_yaml_scalars():
    settings = override(Settings(), ["branching=input", "branch_batch=8", "alpha_intermediate=false"])
    assert (settings.branching, settings.branch_batch, settings.alpha_intermediate) == ("input", 8, False)
    assert settings.branch().batch == 8


@pytest.mark.parametrize("assignment", ["branching=beta", "bound_method=lp", "no_such_key=1", "branching"])
def test_bad_overrides_are_user_errors(assignment):
    with pytest.raises(UserError):
        override(Settings(), [assignment])


def test_unknown_keys_in_the_file_are_user_errors(tmp_path):
    path = tmp_path / "families.yaml"
    path.write_text("default:\n  branching: relu\nmnistfc:\n  branch_depth: 3\n")
    with pytest.raises(UserError, match="branch_depth"):
        load_settings("mnistfc", path)
    path.write_text("default:\n  branching: sideways\n")
    with pytest.raises(UserError, match="branching must be one of"):
        load_settings(None, path)
