"""The examples of the README and of the manual (docs/*.md) run as written, and every number
their code prints is what the code prints.

* A Python block marked `<!-- test -->` runs as written; `<!-- test: cifar10 -->` too, with the
  real CIFAR-10 (`RESNET_JAX_CIFAR10_DIR`, prepared once into `$TFDS_DATA_DIR`), and is skipped
  without it.
* In those blocks, a one-line expression ending in `# -> TEXT` must give TEXT: what it prints,
  else its value (integers with thousands separators, anything else as `repr`); TEXT may go on
  with a space and an explanation.
* A plain block marked `<!-- output -->` is what the test block before it prints.
* The named-network table's sizes (docs/models.md) and the prose's "`NAME` counts N
  parameters" are the registry's counts.
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import pathlib
import re
import sys
import types

import pytest

from resnet_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The README, then the manual's pages (the API reference is generated from docstrings).
PAGES = {path: (ROOT / path).read_text() for path in
         ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if not p.is_symlink())]}
MARKED = re.compile(r"<!-- (?P<kind>test|test: cifar10|output) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
CHECK = re.compile(r"^(?P<indent>\s*)(?P<expr>\S.*?)\s+# -> (?P<want>.+)$")


def _blocks():
  """(code, needs real CIFAR-10, the output it prints or None, "page:line"), in page order."""
  blocks = []
  for page, text in PAGES.items():
    for match in MARKED.finditer(text):
      if match["kind"] == "output":
        assert blocks and blocks[-1][2] is None, f"{page}: an <!-- output --> block follows no test block"
        blocks[-1] = blocks[-1][:2] + (match["body"],) + blocks[-1][3:]
      else:
        assert match["lang"] == "python", f"{page}: a <!-- test --> block must be ```python"
        line = text[:match.start()].count("\n") + 1
        blocks.append((match["body"], match["kind"] == "test: cifar10", None, f"{page}:{line}"))
  return blocks


BLOCKS = _blocks()


def _shown(value) -> str:
  if isinstance(value, int) and not isinstance(value, bool):
    return f"{value:,}"
  return repr(value)


def _check(compute, want: str, where: str) -> None:
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    value = compute()
  sys.stdout.write(printed.getvalue())  # still part of the block's output
  got = printed.getvalue().strip() or _shown(value)
  assert want == got or want.startswith(got + " "), f"{where}: the code gives {got!r}, the page says {want!r}"


def instrument(code: str, where: str) -> str:
  """`EXPR  # -> TEXT` lines become checks of EXPR against TEXT."""
  page, first_line = where.rsplit(":", 1)
  lines = []
  for number, line in enumerate(code.splitlines(), int(first_line) + 2):
    match = CHECK.match(line)
    if match:
      ast.parse(match["expr"], mode="eval")  # one whole expression per checked line
      line = f"{match['indent']}__readme_check__(lambda: ({match['expr']}), {match['want']!r}, '{page}:{number}')"
    lines.append(line)
  return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def real_cifar10(tmp_path_factory):
  source = os.environ.get("RESNET_JAX_CIFAR10_DIR")
  if not source:
    pytest.skip("real CIFAR-10 not configured: set RESNET_JAX_CIFAR10_DIR to a cifar-10-batches-bin folder")
  import resnet_jax.data as rjd  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("readme_tfds")
  rjd.prepare("cifar10", source, data_dir)
  return data_dir


def test_the_readme_and_every_manual_page_with_code_have_tested_examples():
  assert len(BLOCKS) >= 6 and sum(CHECK.match(l) is not None for b in BLOCKS for l in b[0].splitlines()) >= 8
  tested = {where.rsplit(":", 1)[0] for *_, where in BLOCKS}
  assert {"README.md", "docs/index.md", "docs/models.md", "docs/interop.md", "docs/training.md", "docs/data.md"} <= tested


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[b[3] for b in BLOCKS])
def test_example_runs_and_prints_what_it_says(index, monkeypatch, request, capsys):
  code, needs_cifar10, output, line = BLOCKS[index]
  if needs_cifar10:
    monkeypatch.setenv("TFDS_DATA_DIR", str(request.getfixturevalue("real_cifar10")))
  from resnet_jax.data import registry  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))  # pylint: disable=protected-access
  monkeypatch.chdir(ROOT)  # paths in the examples are the repository's
  # A real module: dataclasses (Flax modules) look their defining module up in sys.modules.
  module = types.ModuleType(f"readme_example_{index}")
  module.__readme_check__ = _check
  monkeypatch.setitem(sys.modules, module.__name__, module)
  capsys.readouterr()
  exec(compile(instrument(code, line), f"the example at {line}", "exec"), module.__dict__)
  if output is not None:
    assert capsys.readouterr().out == output


def _named_network_rows():
  """(names, sizes as printed) of each row of the "Named networks" table."""
  page = PAGES["docs/models.md"]
  table = page[page.index("## Named networks"):page.index("Known differences")]
  rows = []
  for row in table.splitlines():
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    if len(cells) != 3 or cells[0] in ("family", "---"):
      continue
    names = []
    for group in re.findall(r"`([^`]+)`", cells[1]):
      first, *more = group.split("/")
      prefix = re.match(r"\D+", first).group()
      names += [first] + [prefix + m for m in more]
    rows.append((names, cells[2].split(" / ")))
  return rows


def test_named_network_table_covers_the_registry_with_its_sizes():
  rows = _named_network_rows()
  assert sorted(n for names, _ in rows for n in names) == models.names()
  for names, sizes in rows:
    assert len(names) == len(sizes), (names, sizes)
    for name, printed in zip(names, sizes):
      shape = (1, 32, 32, 3) if models.config(name).get("stem") == "cifar" else (1, 64, 64, 3)
      decimals = len(printed.rstrip("M").partition(".")[2])
      assert f"{models.size(models.create(name), shape)[0] / 1e6:.{decimals}f}M" == printed, name


def test_parameter_counts_in_the_prose_are_the_registrys():
  claims = [claim for text in PAGES.values() for claim in re.findall(r"`(\w+)` counts ([\d,]+) parameters", text)]
  assert len(claims) >= 2
  for name, count in claims:
    assert f"{models.size(models.create(name), (1, 32, 32, 3))[0]:,}" == count, name


def test_examples_read_no_environment_variable_a_new_user_lacks():
  """Pasted into Python, every block runs for a new user: none subscripts `os.environ` (the
  "Load a trained run" block read RESNET_JAX_CIFAR10_DIR, which only the Makefile sets: a
  KeyError), and none names a variable the Makefile exports but a user need not set."""
  exported = set(re.findall(r"^export (\w+)", (ROOT / "Makefile").read_text(), re.M)) - {"TFDS_DATA_DIR"}
  for code, _, _, where in BLOCKS:
    assert "os.environ[" not in code, where
    assert not [name for name in exported if name in code], where
