"""The README's library examples run as written (blocks marked `<!-- test -->`)."""
from __future__ import annotations

import pathlib
import re
import sys
import types

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"<!-- test -->\n```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_tested_examples():
  assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, monkeypatch):
  from resnet_jax.data import registry  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))  # pylint: disable=protected-access
  # A real module: dataclasses (Flax modules) look their defining module up in sys.modules.
  module = types.ModuleType(f"readme_example_{index}")
  monkeypatch.setitem(sys.modules, module.__name__, module)
  exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), module.__dict__)
