"""A training run's workdir: its layout, its lock, and the promises its files keep.

`Workdir(path)` is the one owner of what a workdir holds and where (local or `gs://`,
decided once, by `files.files_for`):

| name | what |
|---|---|
| `config.json` | the run's config (a copy: each checkpoint records it too) |
| `workdir.json` | the layout version (`FORMAT`) and the resnet_jax version that wrote it |
| `.lock` | the single-writer lock (`lock.py`; on `gs://` a lease, `lease.py`) |
| `checkpoints/`, `checkpoints_unreadable/` | Orbax checkpoints (`checkpoints.py`), and the ones set aside |
| `metrics.jsonl`, `tensorboard/`, `sessions.jsonl` | the records (`records.py`) |
| `preprocessing.json` | the eval-time input transform recorded with the weights |
| `result.json` | a study's summary of a finished run |

Promises: one writer at a time (`lock`); a known layout version (`check_format`: another
version is refused with the version to use); one recipe (`check_resumable`: the fields of a
resumed run's config that differ from the config it was trained with, ignoring
`OPERATIONAL_FIELDS` — logging, checkpoint and evaluation cadence, data location, input
threads: they do not change what is trained — refuse the resume; `init_from` starts a new
run from its weights instead).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax

from resnet_jax import errors
from resnet_jax import __version__
from resnet_jax.storage import checkpoints
from resnet_jax.storage import files
from resnet_jax.storage import lease as lease_lib
from resnet_jax.storage import lock as lock_lib
from resnet_jax.storage import object_store
from resnet_jax.storage import records
from resnet_jax.storage.checkpoints import Checkpointer
from resnet_jax.storage.files import WorkdirError

FORMAT = 1
Log = Callable[[str], None]

# Fields that may change between the sessions of one run: they change how often the run
# logs, evaluates and saves, where it reads its data and how fast, never what it trains.
OPERATIONAL_FIELDS = frozenset({
    "log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
    "keep_best_checkpoints", "async_checkpoints", "steps_per_dispatch", "eval_batch_size",
    "data.data_dir", "data.num_workers", "data.num_threads", "data.prefetch_batches",
    "data.eval_split", "data.placement", "data.jpeg_decoder", "init_from",
})


class ConfigChangedError(WorkdirError):
  """A resumed run was asked to train with a different recipe than its checkpoints."""


def _flat(value: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(value, Mapping) or hasattr(value, "to_dict"):
    value = value.to_dict() if hasattr(value, "to_dict") else value
    out = {}
    for k, v in value.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def flat_fields(config: Mapping[str, Any]) -> Dict[str, Any]:
  """Every leaf field of a config (or its saved JSON) as `dotted.key -> value`, the values as
  JSON has them (tuples as lists): a config and its saved `config.json` compare equal."""
  return json.loads(json.dumps(_flat(config), default=str))


_ABSENT = object()


def config_changes(saved: Mapping[str, Any], requested: Mapping[str, Any],
                   ignore: frozenset = OPERATIONAL_FIELDS,
                   defaults: Optional[Mapping[str, Any]] = None) -> List[Tuple[str, Any, Any]]:
  """`(field, saved value, requested value)` for every field that differs, sorted.

  A field present on one side only counts, with `None` on the other (`model.` fields
  that one config lists and the other leaves at its default compare as their values),
  except a field the saved config lacks whose requested value is its default (`defaults`,
  flat: the engine's defaults): a field added since that run was saved, which trained with
  what the default does.
  """
  a, b = flat_fields(saved), flat_fields(requested)
  defaults = flat_fields(defaults) if defaults else {}
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in ignore and a.get(k) != b.get(k)
          and not (k not in a and b.get(k) == defaults.get(k, _ABSENT))]


def describe_changes(changes: List[Tuple[str, Any, Any]], limit: int = 3) -> str:
  text = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes[:limit])
  if len(changes) > limit:
    text += f"; and {len(changes) - limit} more ({', '.join(k for k, _, _ in changes[limit:])})"
  return text


class Workdir:
  """A run's directory (module docstring); `Workdir(path)` for a local path or a `gs://` URL."""

  CONFIG = "config.json"
  FORMAT = "workdir.json"
  LOCK = lock_lib.LOCK_FILE
  CHECKPOINTS = "checkpoints"
  UNREADABLE = checkpoints.UNREADABLE_DIR
  METRICS = records.METRICS_FILE
  SESSIONS = records.SESSIONS_FILE
  TENSORBOARD = records.TENSORBOARD_DIR
  PREPROCESSING = "preprocessing.json"
  RESULT = "result.json"

  def __init__(self, path: "str | os.PathLike | Workdir"):
    self.path = path.path if isinstance(path, Workdir) else files.as_path(path)
    files.check_path(self.path)  # before anything is written: a path Orbax would misread
    self.files = files.files_for(self.path)

  def __repr__(self) -> str:
    return f"Workdir({str(self.path)!r})"

  def __str__(self) -> str:
    return str(self.path)

  def __fspath__(self) -> str:
    return str(self.path)

  @property
  def name(self) -> str:
    return self.path.name

  @property
  def is_remote(self) -> bool:
    return isinstance(self.files, files.ObjectFiles)

  def __truediv__(self, name: str):
    """The path of one of the workdir's entries."""
    return self.path / name

  # -- files ---------------------------------------------------------------------------
  def has(self, name: str) -> bool:
    return self.files.is_file(self / name)

  def read_text(self, name: str) -> str:
    """An entry's text; FileNotFoundError when there is none."""
    return self.files.read_text(self / name)

  def write_text(self, name: str, text: str | bytes) -> None:
    """Replaces an entry atomically (creating the workdir where it is a local directory)."""
    self.files.make_dirs(self.path)
    self.files.write_atomic(self / name, text)

  def read_json(self, name: str) -> Any:
    """An entry's JSON value; None when there is none (`ValueError` when it is damaged)."""
    try:
      return json.loads(self.read_text(name))
    except FileNotFoundError:
      return None

  def write_json(self, name: str, value: Any, indent: Optional[int] = None) -> None:
    self.files.make_dirs(self.path)
    self.files.write_json(self / name, value, indent)

  def move_to(self, target: "Workdir") -> None:
    """Moves the whole workdir (a study's run set aside)."""
    self.files.move_tree(self.path, target.path)

  # -- promises ------------------------------------------------------------------------
  def check_reachable(self) -> None:
    """A one-line `StorageError` for a bucket that is missing or refuses this account."""
    object_store.check_reachable(self.path)

  def lock(self) -> lock_lib.Lock | lease_lib.Lease:
    """Takes the workdir's lock (a lease on an object store) or raises `WorkdirBusyError`
    naming the holder."""
    if self.is_remote:
      return lease_lib.Lease(str(self.path)).acquire()
    return lock_lib.Lock(self.path).acquire()

  def check_lock(self) -> None:
    """Before a write: raises `WorkdirBusyError` if this process held the workdir's lock (or
    lease) and may have lost it to another trainer (`lock.check`, `lease.check`)."""
    (lease_lib.check if self.is_remote else lock_lib.check)(self.path)

  def check_format(self, write: bool = False) -> None:
    """Refuses a workdir of another layout version; `write` records ours in a new workdir.

    A workdir from before `workdir.json` existed (format 1, the first) is accepted and,
    with `write`, stamped.
    """
    path = self / self.FORMAT
    try:
      text = self.read_text(self.FORMAT)
    except FileNotFoundError:
      if write:
        self.write_json(self.FORMAT, {"format": FORMAT, "resnet_jax": __version__})
      return
    try:
      info = json.loads(text)
      found = int(info["format"])
    except (ValueError, KeyError, TypeError) as e:
      raise WorkdirError(f"{path} is unreadable ({type(e).__name__}: {e}); it should hold "
                         f'{{"format": {FORMAT}, ...}}') from None
    if found != FORMAT:
      raise WorkdirError(
          f"workdir {self.path} was written by resnet_jax {info.get('resnet_jax', '?')} in workdir "
          f"format {found}; this is resnet_jax {__version__}, format {FORMAT}: continue it with "
          f"resnet_jax {info.get('resnet_jax', 'of that format')}, or train in a new --workdir")

  def check_resumable(self, requested: Mapping[str, Any], saved: Optional[Mapping[str, Any]],
                      defaults: Optional[Mapping[str, Any]] = None) -> None:
    """Refuses to resume the run's checkpoints with a changed recipe (see `config_changes`;
    `defaults`: the engine's defaults, for fields added since the run was saved).

    `saved` is the config its newest checkpoint records (`config.json` is a copy, which may
    be missing or damaged); None for checkpoints of versions that did not record it, which
    are compared with `config.json` when it exists.
    """
    if saved is None:
      saved = self.read_json(self.CONFIG) if self.has(self.CONFIG) else None
      if saved is None:
        return
    changes = config_changes(saved, requested, defaults=defaults)
    schedule = flat_fields(requested).get("schedule.name")
    if schedule != "cosine" and flat_fields(saved).get("schedule.name") == schedule:
      # Only the cosine schedule depends on the training length: a step or constant run may be
      # extended (or cut short) without changing any step already taken.
      changes = [c for c in changes if c[0] not in ("num_steps", "num_epochs")]
    if changes:
      raise ConfigChangedError(
          f"{self.path} holds checkpoints of a run with another config: "
          f"{describe_changes(changes)} (saved -> requested). Resume with the saved config "
          f"({self / self.CONFIG}), train in a new --workdir, or start a new run from its "
          f"weights: --config.init_from={self.path}")

  # -- checkpoints ---------------------------------------------------------------------
  def checkpointer(self, keep: int = 3, keep_best: int = 1, async_save: bool = True,
                   create: bool = True, rank_by: str = checkpoints.RANK_BY) -> Checkpointer:
    """The workdir's checkpoints (`create=False`: a reader, for eval and loading); `rank_by`: the
    eval metric that ranks them for keep-best ("error", or "ema_error" for the EMA's)."""
    return Checkpointer(self / self.CHECKPOINTS, keep=keep, keep_best=keep_best, async_save=async_save,
                        create=create, rank_by=rank_by)

  def saved_steps(self) -> List[int]:
    """Steps with a complete checkpoint, sorted, from the listing alone (no Orbax manager)."""
    return checkpoints.complete_steps(self / self.CHECKPOINTS)

  def best_checkpoint(self, checkpointer: Checkpointer, log: Optional[Log] = None) -> Tuple[int, float]:
    """(step, eval error) of the kept checkpoint with the lowest eval error (of the weights, or of
    their EMA when the checkpointer ranks by "ema_error"): the one rule.

    The error saved with each checkpoint decides; a checkpoint saved without one (the final
    save of runs before the loop stored it) is ranked by the evaluation of its step in
    `metrics.jsonl`. Raises `FileNotFoundError` when no kept checkpoint was evaluated.
    """
    steps, key = checkpointer.all_steps(), checkpointer.rank_by
    kind, field = checkpoints.logged_metric(key)
    logged = records.latest_per_step(self.read_metrics(log), kind, field)
    scored = []
    for step in steps:
      error = checkpointer.eval_metrics(step).get(key, logged.get(step, {}).get(field))
      if error is not None:
        scored.append((float(error), step))
    if not scored:
      raise errors.MissingError(f"no evaluated checkpoint in {checkpointer.directory} (saved steps {steps}, none "
                              "with an eval error saved or in metrics.jsonl); use step='latest' or a step number")
    error, step = min(scored)
    return int(step), error

  # -- records -------------------------------------------------------------------------
  def metric_writer(self, prefix: str = "", enabled: Optional[bool] = None) -> records.MetricWriter:
    return records.MetricWriter(self.path, self.files, enabled=enabled, prefix=prefix)

  def session_log(self, enabled: Optional[bool] = None) -> records.SessionLog:
    return records.SessionLog(self / self.SESSIONS, self.files,
                              enabled=jax.process_index() == 0 if enabled is None else enabled)

  def read_metrics(self, log: Optional[Log] = records.warn) -> List[Dict[str, Any]]:
    """All records of `metrics.jsonl`, in order; lines cut short by a crash are skipped
    (and reported through `log`)."""
    return self.files.read_jsonl(self / self.METRICS, log)

  def read_sessions(self, log: Optional[Log] = records.warn) -> List[Dict[str, Any]]:
    """All records of `sessions.jsonl`, in order (as `read_metrics`)."""
    return self.files.read_jsonl(self / self.SESSIONS, log)

  def last_record(self, kind: str, log: Optional[Log] = records.warn) -> Dict[str, float]:
    """The scalars of the last metrics record of `kind` ("train" | "eval"), without step, kind and time."""
    found = [r for r in self.read_metrics(log) if r.get("kind") == kind]
    return {k: v for k, v in found[-1].items() if k not in ("step", "kind", "time")} if found else {}
