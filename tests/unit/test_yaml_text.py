"""YAML is read by libyaml where PyYAML has it, and stays safe loading either way."""

from __future__ import annotations

import pytest
import yaml

from agentgate.common import yaml_text


def test_libyaml_parses_when_pyyaml_has_it() -> None:
    # The pinned PyYAML wheels carry libyaml: a build without it would be ~15x slower
    # on every verification, which this makes visible.
    assert yaml.__with_libyaml__
    assert yaml_text.SAFE_LOADER is yaml.CSafeLoader


def test_python_objects_are_refused() -> None:
    # What a full loader would construct (and run): a safe loader refuses the tag.
    hostile = "!!python/object/apply:os.system ['echo owned']"
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml_text.safe_load(hostile)
    assert yaml_text.safe_load("a: [1, yes, ~]") == {"a": [1, True, None]}


def test_nodes_carry_their_lines() -> None:
    root = yaml_text.compose("a: 1\nb:\n  - x\n")
    assert isinstance(root, yaml.MappingNode)
    assert [key.start_mark.line for key, _ in root.value] == [0, 1]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(yaml.YAMLError, match="nesting depth"):
        yaml_text.compose("[" * 100_000)
