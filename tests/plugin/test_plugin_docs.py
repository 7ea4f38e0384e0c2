"""The examples in docs/testing.md run and pass as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from plugin_support import INNER_INI

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"

# Complete test modules in the guide start with a "# test_<name>.py" line.
_EXAMPLE = re.compile(r"```python\n# (test_\w+)\.py\n(.*?)```", re.DOTALL)


def _examples() -> dict[str, str]:
    return dict(_EXAMPLE.findall(GUIDE.read_text(encoding="utf-8")))


def test_guide_has_examples() -> None:
    assert len(_examples()) == 10


def test_guide_examples_pass(pytester: pytest.Pytester) -> None:
    pytester.makeini(INNER_INI)
    pytester.makepyfile(**_examples())

    result = pytester.runpytest()

    result.assert_outcomes(passed=13)
