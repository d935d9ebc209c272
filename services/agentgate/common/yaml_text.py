"""YAML read by libyaml when PyYAML was built with it, else by PyYAML's own parser.

The same safe loading either way (PyYAML's `SafeConstructor` and resolver); libyaml only
parses 8-18x faster: a gate plan or an agent script is read on every verification and agent
execution (docs/benchmarks.md, "Repository scale").
"""

from __future__ import annotations

from typing import Any

import yaml

#: `yaml.CSafeLoader` when PyYAML has libyaml (its wheels do), else `yaml.SafeLoader`.
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)`, parsed by `SAFE_LOADER`."""
    return yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader


def compose(text: str) -> yaml.Node | None:
    """`yaml.compose(text)` with `SAFE_LOADER`: the node tree, with the line of each node."""
    return yaml.compose(text, Loader=SAFE_LOADER)
