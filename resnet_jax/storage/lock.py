"""The single-writer lock of a local workdir: an exclusive `flock` on `workdir/.lock`.

Held for the life of the training process (the kernel releases it when the process dies,
even on `kill -9`), so a second `resnet-jax train` on the same workdir refuses instead of
interleaving checkpoints with the first. A `gs://` workdir has no `flock`: its lock is a
lease object (`lease.py`) with the same refusal.
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


class Lock:
  """The exclusive lock of a local workdir (module docstring); a context manager."""

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
      raise files.WorkdirWriteError(f"cannot write {self.path}: {e.strerror}") from None
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
