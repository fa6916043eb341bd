"""Named model parts: one table per kind (norm, conv, act, stem, block, shortcut, attention, identity_init,
anti_alias), one resolver, and one way a part's own options are checked.

A network field such as ``norm`` takes either a name from its kind's table (configs stay
plain data) or the part itself (a constructor, class or function). ``PartTable.resolve``
is the one place that turns either into the part, and the one place that words the
error for an unknown name (as timm's ``get_norm_layer`` / ``get_act_layer`` do).

A part's *options* (``shortcut_options``, ``norm_options``, ``attention_options``, ``identity_init_options``) are the
fields of its class that the network does not set itself; ``check_options`` refuses an
option the part does not read, or a bad value, in one line.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, Collection, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from resnet_jax.errors import InputError

# option -> (test of a value, what a value must be), for the one-line error.
OptionChecks = Mapping[str, Tuple[Callable[[Any], bool], str]]
# Fields of every Flax module, never options.
_FLAX_FIELDS = ("parent", "name")


def is_number(value: Any) -> bool:
  """A real number that is not a bool (True is an int to Python, not a rate)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def part_class(part: Any) -> Optional[type]:
  """The class behind a part (a class, or a ``functools.partial`` of one), else None."""
  while isinstance(part, functools.partial):
    part = part.func
  return part if isinstance(part, type) else None


def option_names(part: Any, common: Collection[str] = ()) -> Optional[Tuple[str, ...]]:
  """The options of a part: its class's dataclass fields but `common` ones (those the network
  passes itself); None where the part is no dataclass (a plain function)."""
  cls = part_class(part)
  if cls is None or not dataclasses.is_dataclass(cls):
    return None
  skip = set(_FLAX_FIELDS) | set(common)
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip)


def check_options(kind: str, name: Any, names: Optional[Sequence[str]], checks: OptionChecks,
                  options: Mapping[str, Any]) -> None:
  """`InputError` in one line for an option of `{kind}_options` that part `name` does not read
  (`names`; None: any) or a value its check refuses."""
  if not isinstance(options, Mapping):
    raise InputError(f"{kind}_options={options!r} must be a mapping of option to value, e.g. {{}}")
  for key, value in options.items():
    if names is not None and key not in names:
      takes = f"takes {', '.join(names)}" if names else "takes no options"
      raise InputError(f"{kind}_options {key!r} does not apply to {kind}={name!r} ({takes})")
    test, must = checks.get(key, (lambda v: True, ""))
    if not test(value):
      raise InputError(f"{kind} option {key}={value!r} must be {must}")


def _callable(value: Any) -> bool:
  return callable(value) and not isinstance(value, str)


class PartTable(Mapping[str, Any]):
  """The named parts of one kind; also a read-only mapping from name to part.

  Args:
    kind: the field's name, used in errors ("unknown norm 'x'").
    parts: name -> part.
    otherwise: what else the field accepts, for the error ("a norm constructor (see flax_norm)").
    accepts: whether a value given directly is a part (default: any callable).
  """

  def __init__(self, kind: str, parts: Mapping[str, Any], otherwise: str,
               accepts: Callable[[Any], bool] = _callable):
    self.kind = kind
    self._parts: Dict[str, Any] = dict(parts)
    self.otherwise = otherwise
    self._accepts = accepts

  def __getitem__(self, name: str) -> Any:
    return self._parts[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._parts)

  def __len__(self) -> int:
    return len(self._parts)

  def __repr__(self) -> str:
    return f"PartTable({self.kind!r}, {list(self._parts)})"

  def is_part(self, value: Any) -> bool:
    """A part given directly rather than by name."""
    return not isinstance(value, str) and self._accepts(value)

  def check(self, value: Any) -> None:
    """Raises `InputError` naming the valid choices if `value` is neither a name nor a part."""
    if not self.is_part(value) and value not in self._parts:
      raise InputError(f"unknown {self.kind} {value!r}: valid choices are {', '.join(map(str, self._parts))}"
                       f" or {self.otherwise}")

  def resolve(self, value: Any) -> Any:
    """The part for a name, or `value` itself if it is already a part."""
    self.check(value)
    return value if self.is_part(value) else self._parts[value]

  def name_of(self, value: Any) -> Optional[str]:
    """The name `value` is registered under (a name or a registered part), else None."""
    if isinstance(value, str):
      return value if value in self._parts else None
    return next((name for name, part in self._parts.items() if part is value), None)

  def register(self, name: str, part: Any) -> None:
    """Adds (or replaces) a named part, e.g. a norm a config can then name."""
    if not self.is_part(part):
      raise TypeError(f"{self.kind} {name!r}: expected {self.otherwise}, got {part!r}")
    self._parts[name] = part
