"""The single-writer lock of a local workdir: an exclusive `flock` on the workdir and on `.lock`.

Held for the life of the training process (the kernel releases it when the process dies,
even on `kill -9`), so a second `resnet-jax train` on the same workdir refuses instead of
interleaving checkpoints with the first. A `gs://` workdir has no `flock`: its lock is a
lease object (`lease.py`) with the same refusal.

The lock is the workdir directory's own `flock`, which removing `.lock` cannot undo (a user
who deleted `.lock` under a running trainer let a second one write beside it). `.lock` holds
who has it, for the second process's message, carries a lock of its own (for a filesystem
that cannot lock a directory, such as NFS, and for older versions, which lock only it) and is
removed when the lock is released, so a finished run leaves nothing that invites deleting it.
Before each checkpoint the holder checks that `.lock` is still its file (`check`): one removed
under it is written again where the directory lock kept every other trainer out, and where
nothing did, the holder stops without saving.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import platform
from typing import Any, Dict, Optional

from resnet_jax.storage import files
from resnet_jax.storage import lease as lease_lib
from resnet_jax.storage.files import WorkdirError

LOCK_FILE = ".lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
# What `flock` of a directory gives where the filesystem cannot lock one (NFS emulates flock with
# byte-range locks, which need a file opened for writing).
_CANNOT_LOCK_DIRECTORIES = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
_HELD: Dict[str, "Lock"] = {}  # workdir -> the lock this process holds on it


class Lock:
  """The exclusive lock of a local workdir (module docstring); a context manager."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd: Optional[int] = None
    self._dir_fd: Optional[int] = None

  def acquire(self) -> "Lock":
    _make_workdir(self.path.parent)
    self._dir_fd = _lock_directory(self.path.parent)
    try:
      self._fd = _lock_file(self.path, _open_lock_file(self.path))
      self._write_holder()
    except BaseException:
      self.release()
      raise
    _HELD[str(self.path.parent)] = self
    return self

  def _write_holder(self) -> None:
    """Who holds the lock, for the message of a second process (written in place: the lock is this inode)."""
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "host": platform.node(),
                                      "started": datetime.datetime.now().isoformat(timespec="seconds")}).encode(), 0)
    except OSError as e:
      raise files.WorkdirWriteError(f"cannot write {self.path}: {e.strerror}") from None

  def _is_ours(self) -> bool:
    try:
      return _same_file(os.stat(self.path, follow_symlinks=False), os.fstat(self._fd))
    except OSError:
      return False

  def check(self) -> None:
    """Before a write: raises `WorkdirBusyError` if `.lock` was removed or replaced while held and
    no directory lock kept other trainers out; with one, writes `.lock` again."""
    if self._fd is None or self._is_ours():
      return
    if self._dir_fd is None:
      raise lease_lib.WorkdirBusyError(
          f"{self.path} was removed or replaced while this process held it, and this filesystem cannot lock "
          "the workdir itself, so another trainer may have started in it; stopped without saving a checkpoint "
          "(run the same command again once no other process trains there)")
    fd = _open_lock_file(self.path)
    try:
      self._fd = _lock_file(self.path, fd, previous=self._fd)
      self._write_holder()
    except BaseException:
      self._fd = None
      raise

  def release(self) -> None:
    _HELD.pop(str(self.path.parent), None)
    if self._fd is not None:
      if self._is_ours():  # removed while still locked: a process waiting for it retries on a fresh file
        try:
          os.unlink(self.path)
        except OSError:
          pass
      os.close(self._fd)  # closing releases its flock
      self._fd = None
    if self._dir_fd is not None:
      os.close(self._dir_fd)
      self._dir_fd = None

  def __enter__(self) -> "Lock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def check(workdir) -> None:
  """`Lock.check` of the lock this process holds on `workdir`, if any."""
  lock = _HELD.get(str(pathlib.Path(workdir)))
  if lock is not None:
    lock.check()


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _busy(path: pathlib.Path) -> lease_lib.WorkdirBusyError:
  return lease_lib.busy_error(str(path.parent), _holder(path))


def _lock_directory(workdir: pathlib.Path) -> Optional[int]:
  """A descriptor holding the workdir directory's exclusive flock; None where the filesystem
  cannot lock a directory (the `.lock` file's flock then stands alone)."""
  try:
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  except OSError as e:
    raise WorkdirError(f"cannot open {workdir}: {e.strerror}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in _CANNOT_LOCK_DIRECTORIES:
      return None
    if e.errno in _BUSY:
      raise _busy(workdir / LOCK_FILE) from None
    raise WorkdirError(f"cannot lock {workdir}: {e.strerror}") from None
  return fd


def _lock_file(path: pathlib.Path, fd: int, previous: Optional[int] = None) -> int:
  """Locks the open `.lock` file `fd` (closing `previous` once it is replaced); retries on a fresh
  file when the one locked was removed meanwhile (by a holder releasing it)."""
  for _ in range(5):
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in _BUSY:
        raise WorkdirError(f"cannot lock {path}: {e.strerror}") from None
      raise _busy(path) from None
    try:
      if _same_file(os.stat(path, follow_symlinks=False), os.fstat(fd)):
        if previous is not None:
          os.close(previous)
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)
    fd = _open_lock_file(path)
  os.close(fd)
  raise WorkdirError(f"cannot lock {path}: it keeps being removed; run again")


def _make_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory; give a directory (it is created "
                       "when missing)")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create {e.filename or workdir}: {e.strerror}; the --workdir must be a directory "
                       "this user can write (not on a read-only filesystem)") from None


def _open_lock_file(path: pathlib.Path) -> int:
  """The lock file's descriptor, creating the file (never through a link)."""
  try:
    return files.open_file(path, os.O_RDWR | os.O_CREAT)
  except OSError as e:
    raise WorkdirError(f"cannot create {e.filename or path}: {e.strerror}; the --workdir must be a directory "
                       "this user can write (not on a read-only filesystem)") from None


def _holder(path: pathlib.Path) -> Dict[str, Any]:
  """The process holding the lock, as the lock file records it."""
  try:
    holder = json.loads(files.files_for(path).read_text(path) or "{}")
  except (OSError, ValueError, WorkdirError):
    holder = {}
  return holder if isinstance(holder, dict) else {}
