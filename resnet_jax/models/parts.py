"""Named model parts: one table per kind (norm, conv, act, stem, block, shortcut), one resolver.

A network field such as ``norm`` takes either a name from its kind's table (configs stay
plain data) or the part itself (a constructor, class or function). ``PartTable.resolve``
is the one place that turns either into the part, and the one place that words the
error for an unknown name (as timm's ``get_norm_layer`` / ``get_act_layer`` do).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from resnet_jax import errors


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
    """Raises ValueError naming the valid choices if `value` is neither a name nor a part."""
    if not self.is_part(value) and value not in self._parts:
      raise errors.InputError(f"unknown {self.kind} {value!r}: valid choices are {', '.join(map(str, self._parts))}"
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
