"""The engine's shape, checked: layers, no import circles, one error base, short functions.

These read the package's source (and import its modules), so they hold for every change:

* `models/`, `data/`, `runtime/` and `storage/` import nothing from `train/` (nor `storage/` from
  `data/`), and no module imports itself through others, counting imports made only for type
  checking;
* the training loop and evaluation never ask whether runs are packed (a run alone is a group of
  one: `train/group.py` decides how a group dispatches, once);
* every exception class the package defines derives from `resnet_jax.errors.Error`;
* no function is longer than 60 lines;
* no message goes through Python's root logger.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest

import resnet_jax
from resnet_jax import errors

PACKAGE = pathlib.Path(resnet_jax.__file__).parent
MAX_FUNCTION_LINES = 60
# layer -> the layers it must not import
FORBIDDEN = {"models": ("train", "storage", "data"), "runtime": ("train", "storage", "data"),
             "storage": ("train", "data"), "data": ("train",)}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
  """The package's modules that `name` imports anywhere (type-checking blocks included)."""
  found = set()
  package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in MODULES)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        found.add(full if full in MODULES else base)
  return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
  stack, seen = [(start, [start])], set()
  while stack:
    node, trail = stack.pop()
    for nxt in GRAPH[node]:
      if nxt == start:
        return trail + [start]
      if nxt not in seen:
        seen.add(nxt)
        stack.append((nxt, trail + [nxt]))
  return None


def test_no_module_imports_itself_through_others():
  cycles = [c for c in (_cycle_from(m) for m in sorted(GRAPH)) if c]
  assert not cycles, " -> ".join(cycles[0])


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_import_nothing_from_the_layers_above(layer):
  prefix = f"resnet_jax.{layer}"
  bad = sorted((m, i) for m in GRAPH if m == prefix or m.startswith(prefix + ".")
               for i in GRAPH[m] for above in FORBIDDEN[layer] if i.startswith(f"resnet_jax.{above}"))
  assert not bad, bad


@pytest.mark.parametrize("module", ["train/loop.py", "train/evaluation.py"])
def test_the_loop_and_evaluation_never_ask_whether_runs_are_packed(module):
  code = "\n".join(line.split("#")[0] for line in (PACKAGE / module).read_text().splitlines())
  asks = re.findall(r"\bif\b[^\n]*\b(packed|stacked|runs is None|runs is not None)\b", code)
  assert not asks, asks


def _package_exceptions() -> list[type]:
  found = set()
  for info in pkgutil.walk_packages(resnet_jax.__path__, "resnet_jax."):
    module = importlib.import_module(info.name)
    for _, cls in inspect.getmembers(module, inspect.isclass):
      if issubclass(cls, Exception) and not issubclass(cls, Warning) and cls.__module__.startswith("resnet_jax"):
        found.add(cls)
  return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_exception_the_package_defines_derives_from_one_base():
  exceptions = _package_exceptions()
  assert len(exceptions) > 10
  outside = [f"{c.__module__}.{c.__qualname__}" for c in exceptions if not issubclass(c, errors.Error)]
  assert not outside, outside


def test_no_function_is_longer_than_60_lines():
  long = []
  for name, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f"{name}.{node.name}: {lines} lines")
  assert not long, long


def test_library_messages_never_go_through_pythons_root_logger():
  """`logging.warning(...)` logs on the root logger (configuring it on first use: every later
  message of every library came out as "WARNING:root:..."/"WARNING:absl:..."): the package logs
  through loggers of its own, under "resnet_jax" (issue 37)."""
  root_calls = []
  for name, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "logging"
          and node.attr in ("debug", "info", "warning", "error", "exception", "critical", "log", "basicConfig")):
        root_calls.append(f"{name}:{node.lineno}: logging.{node.attr}")
  assert not root_calls, root_calls
