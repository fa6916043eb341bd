"""What a training workdir promises: one writer at a time, a known layout version, one recipe.

* `lock(workdir)`: an exclusive `flock` on `workdir/.lock`, held for the life of the
  training process (the kernel releases it when the process dies, even on `kill -9`),
  so a second `resnet-jax train` on the same workdir refuses instead of interleaving
  checkpoints with the first. A `gs://` workdir has no `flock`: its lock is a lease
  object (`resnet_jax.train.lease`) with the same refusal.
* `check_format(workdir)`: `workdir/workdir.json` records the layout version
  (`FORMAT`) and the resnet_jax version that wrote it; another layout version is refused
  with the version to use.
* `config_changes(saved, requested)`: the fields of a resumed run's config that differ
  from the config it was trained with, ignoring `OPERATIONAL_FIELDS` (logging, checkpoint
  and evaluation cadence, data location, input threads: they do not change what is
  trained). A resumed run with a changed recipe is refused; `init_from` starts a new
  run from its weights instead. The reference is the config the newest checkpoint records;
  `workdir/config.json` is a copy (checkpoints of earlier versions are compared with it).

Every file here is read and written through `workdir_io` (never through a link; whole
files replaced atomically), whose `WorkdirError`s are this module's too.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import platform
from typing import Any, Dict, List, Mapping, Optional, Tuple

import ml_collections

from resnet_jax import __version__
from resnet_jax.train import config as config_lib
from resnet_jax.train import lease as lease_lib
from resnet_jax.train import workdir_io
from resnet_jax.train.lease import WorkdirBusyError  # noqa: F401  (re-exported)
from resnet_jax.train.workdir_io import NotAFileError, WorkdirError, WorkdirWriteError  # noqa: F401  (re-exported)

FORMAT = 1
FORMAT_FILE = "workdir.json"
LOCK_FILE = ".lock"

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


class Lock:
  """The exclusive lock of a workdir (see the module docstring); a context manager."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd: Optional[int] = None

  def acquire(self) -> "Lock":
    fd = _open_lock_file(self.path)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f"cannot lock {self.path}: {e.strerror}") from None
      raise lease_lib.busy_error(str(self.path.parent), _holder(self.path)) from None
    try:  # who holds it, for the message of a second process (written in place: the lock is this inode)
      os.ftruncate(fd, 0)
      os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(),
                               "started": datetime.datetime.now().isoformat(timespec="seconds")}).encode())
    except OSError as e:
      os.close(fd)
      raise workdir_io.WorkdirWriteError(f"cannot write {self.path}: {e.strerror}") from None
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "Lock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _open_lock_file(path: pathlib.Path) -> int:
  """The lock file's descriptor, creating the workdir and the file (never through a link)."""
  workdir = path.parent
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory; give a directory (it is created "
                       "when missing)")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir_io.open_file(path, os.O_RDWR | os.O_CREAT)
  except OSError as e:
    raise WorkdirError(f"cannot create {e.filename or path}: {e.strerror}; the --workdir must be a directory "
                       "this user can write (not on a read-only filesystem)") from None


def _holder(path: pathlib.Path) -> Dict[str, Any]:
  """The process holding the lock, as the lock file records it."""
  try:
    holder = json.loads(workdir_io.read_text(path) or "{}")
  except (OSError, ValueError, WorkdirError):
    holder = {}
  return holder if isinstance(holder, dict) else {}


def lock(workdir: str | pathlib.Path) -> Lock | lease_lib.Lease:
  """Takes the workdir's lock (a lease on an object store) or raises `WorkdirBusyError`
  naming the holder."""
  if workdir_io.is_url(workdir):
    return lease_lib.Lease(str(workdir)).acquire()
  return Lock(workdir).acquire()


def check_format(workdir: str | pathlib.Path, write: bool = False) -> None:
  """Refuses a workdir of another layout version; `write` records ours in a new workdir.

  A workdir from before `workdir.json` existed (format 1, the first) is accepted and,
  with `write`, stamped.
  """
  path = workdir_io.as_path(workdir) / FORMAT_FILE
  try:
    text = workdir_io.read_text(path)
  except FileNotFoundError:
    if write:
      workdir_io.make_dirs(path.parent)
      workdir_io.write_json(path, {"format": FORMAT, "resnet_jax": __version__})
    return
  try:
    info = json.loads(text)
    found = int(info["format"])
  except (ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f"{path} is unreadable ({type(e).__name__}: {e}); it should hold "
                       f'{{"format": {FORMAT}, ...}}') from None
  if found != FORMAT:
    raise WorkdirError(
        f"workdir {path.parent} was written by resnet_jax {info.get('resnet_jax', '?')} in workdir "
        f"format {found}; this is resnet_jax {__version__}, format {FORMAT}: continue it with "
        f"resnet_jax {info.get('resnet_jax', 'of that format')}, or train in a new --workdir")


def _flat(value: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, Mapping):
    out = {}
    for k, v in value.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  if isinstance(value, tuple):
    value = list(value)
  return {prefix[:-1]: value}


def flat_fields(config: Mapping[str, Any] | ml_collections.ConfigDict) -> Dict[str, Any]:
  """Every leaf field as `dotted.key -> value`, the values as JSON has them (tuples as lists):
  a config and its saved `config.json` compare equal."""
  return json.loads(json.dumps(_flat(config), default=str))


def config_changes(saved: Mapping[str, Any] | ml_collections.ConfigDict,
                   requested: Mapping[str, Any] | ml_collections.ConfigDict,
                   ignore: frozenset = OPERATIONAL_FIELDS) -> List[Tuple[str, Any, Any]]:
  """`(field, saved value, requested value)` for every field that differs, sorted.

  A field present on one side only counts, with `None` on the other (`model.` fields
  that one config lists and the other leaves at its default compare as their values).
  """
  a, b = flat_fields(saved), flat_fields(requested)
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in ignore and a.get(k) != b.get(k)]


def describe_changes(changes: List[Tuple[str, Any, Any]], limit: int = 3) -> str:
  text = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes[:limit])
  if len(changes) > limit:
    text += f"; and {len(changes) - limit} more ({', '.join(k for k, _, _ in changes[limit:])})"
  return text


def check_resumable(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                    saved: Optional[Mapping[str, Any]] = None) -> None:
  """Refuses to resume a run's checkpoints with a changed recipe (see `config_changes`).

  `saved` is the config its newest checkpoint records, the recipe's reference (`config.json`
  is a copy, which may be missing or damaged). Checkpoints of versions that did not record
  it (None) are compared with `config.json` when it exists.
  """
  if saved is None:
    try:
      saved = config_lib.load_config(workdir)
    except FileNotFoundError:
      return
  changes = config_changes(saved, config)
  if config.schedule.name != "cosine" and saved.get("schedule", {}).get("name") == config.schedule.name:
    # Only the cosine schedule depends on the training length: a step or constant run may be
    # extended (or cut short) without changing any step already taken.
    changes = [c for c in changes if c[0] not in ("num_steps", "num_epochs")]
  if changes:
    workdir = workdir_io.as_path(workdir)
    raise ConfigChangedError(
        f"{workdir} holds checkpoints of a run with another config: "
        f"{describe_changes(changes)} (saved -> requested). Resume with the saved config "
        f"({workdir / config_lib.CONFIG_FILE}), train in a new --workdir, or start a new run from its "
        f"weights: --config.init_from={workdir}")
