"""The single-writer lock of a workdir on an object store: a lease object (issue 26).

An object store has no `flock`, and a pod's hosts share no kernel, so the lock of a `gs://`
workdir is the object `workdir/.lock`:

* taking it creates the object with a generation precondition (create-if-absent, GCS's
  `ifGenerationMatch=0`): of two trainers, one creates it, the other is refused with the
  holder's host, pid and start, which the object holds;
* the holder renews it every `LEASE_SECONDS / 4` (a write conditional on the generation it
  last wrote); a holder dead for longer than its lease (no renewal since) is stale, and the
  next trainer takes it over with a write conditional on the stale generation, saying so in
  one line; a dead holder on the same host (its pid gone) is taken over at once;
* releasing deletes it (conditional on our generation);
* the holder looks at the object every `CHECK_SECONDS` and before each checkpoint (`check`):
  one deleted under it (by hand) is written again at once, unless another trainer created it
  first; a holder that finds that another process took the lease over (it was stalled past its
  lease, or created it after a deletion) says so, and `check(workdir)`, called before each
  checkpoint, stops it without saving beside the new holder.

Staleness compares the holder's renewal time with this host's clock: hosts of one pod keep
NTP time, far closer than a lease.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import secrets
import threading
import time
from typing import Callable, Dict, Optional

from resnet_jax.storage import object_store
from resnet_jax.storage.files import WorkdirError

LEASE_SECONDS = 120.0
# How often the holder looks at its lease object between renewals (one GET): a deleted object is
# written again within this time, leaving another trainer that long to create it instead.
CHECK_SECONDS = 5.0
_HELD: Dict[str, "Lease"] = {}  # workdir -> the lease this process holds on it


class WorkdirBusyError(WorkdirError):
  """Another process trains in the workdir."""


def describe_holder(holder: Dict) -> str:
  if not isinstance(holder, dict) or not holder:
    return "another process"
  return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


def busy_error(workdir: str, holder: Dict) -> WorkdirBusyError:
  who = f" ({describe_holder(holder)})" if isinstance(holder, dict) and holder else ""
  return WorkdirBusyError(
      f"workdir {workdir} is in use by another training process{who}; wait "
      "for it to finish or stop it (SIGTERM saves a checkpoint), or train in another --workdir")


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError, OverflowError):
    return True
  return True


def _parse(content: Optional[bytes]) -> Dict:
  try:
    holder = json.loads(content or b"{}")
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


class Lease:
  """The lease on `workdir/.lock` (module docstring); `acquire`, `release`, a context manager."""

  def __init__(self, workdir: str, lease_seconds: Optional[float] = None,
               log: Callable[[str], None] = lambda line: print(line, flush=True)):
    self.workdir = str(workdir).rstrip("/")
    self.url = f"{self.workdir}/.lock"
    self.lease_seconds = float(LEASE_SECONDS if lease_seconds is None else lease_seconds)
    self.log = log
    self.lost = ""  # why the lease was lost while held (another process took it over)
    self._holder = {"host": platform.node(), "pid": os.getpid(), "token": secrets.token_hex(8),
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                    "lease_seconds": self.lease_seconds}
    self._generation: Optional[int] = None
    self._mutex = threading.Lock()  # the renewing thread and `check` both write `_generation`
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _payload(self) -> bytes:
    return json.dumps({**self._holder, "renewed": time.time()}).encode()

  def _stale_reason(self, holder: Dict) -> str:
    """Why `holder` no longer holds the lease ("" while it does)."""
    age = time.time() - float(holder.get("renewed", 0) or 0)
    if age > float(holder.get("lease_seconds", self.lease_seconds) or self.lease_seconds):
      return f"not renewed for {age:.0f} s"
    if holder.get("host") == platform.node() and not _pid_alive(holder.get("pid")):
      return "its process is gone"
    return ""

  def acquire(self) -> "Lease":
    object_store.check_reachable(self.workdir)
    for _ in range(3):  # a holder that releases meanwhile: try again
      generation = object_store.write_object(self.url, self._payload(), if_generation=0)
      if generation is not None:
        break
      content, current = object_store.read_object(self.url)
      if current is None:
        continue
      holder = _parse(content)
      stale = self._stale_reason(holder)
      if not stale:
        raise busy_error(self.workdir, holder)
      generation = object_store.write_object(self.url, self._payload(), if_generation=current)
      if generation is None:  # another trainer took it over first
        raise busy_error(self.workdir, _parse(object_store.read_object(self.url)[0]))
      self.log(f"took over the lease of workdir {self.workdir} from {describe_holder(holder)} ({stale})")
      break
    else:
      raise WorkdirError(f"cannot take the lease {self.url}: it keeps changing; run again")
    self._generation = generation
    _HELD[self.workdir] = self
    self._thread = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
    self._thread.start()
    return self

  def _renew(self) -> None:
    interval = min(self.lease_seconds / 4, CHECK_SECONDS)
    last_renewal, failing = time.monotonic(), False
    while not self._stop.wait(interval) and not self.lost:
      renew = time.monotonic() - last_renewal >= self.lease_seconds / 4 - 1e-3
      try:
        self.keep(renew)
      except OSError as e:  # a transient failure: the next turn tries again, within the lease
        if not failing:  # said once per outage
          self.log(f"could not renew the lease {self.url} ({e}); trying again")
        failing = True
        continue
      failing = False
      last_renewal = time.monotonic() if renew else last_renewal

  def keep(self, renew: bool = False) -> None:
    """Renews the lease (`renew`), or confirms the object is still ours; writes it again if it
    was deleted; otherwise another process holds it now: `lost` says which."""
    with self._mutex:
      if self.lost or self._generation is None:
        return
      if renew:
        generation = object_store.write_object(self.url, self._payload(), if_generation=self._generation)
        if generation is not None:
          self._generation = generation
          return
      content, current = object_store.read_object(self.url)
      if current == self._generation:
        return
      if current is None:  # deleted while held: ours again, unless another trainer created it first
        generation = object_store.write_object(self.url, self._payload(), if_generation=0)
        if generation is not None:
          self._generation = generation
          self.log(f"the lease {self.url} was deleted while this process held it; wrote it again")
          return
        content = object_store.read_object(self.url)[0]
      self.lost = f"the lease {self.url} was taken over by {describe_holder(_parse(content))}"
      self.log(f"warning: {self.lost}; this process no longer holds the workdir")

  def release(self) -> None:
    _HELD.pop(self.workdir, None)
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._generation is not None and not self.lost:
      object_store.delete_object(self.url, if_generation=self._generation)
    self._generation = None

  def __enter__(self) -> "Lease":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def check(workdir) -> None:
  """Before a write: raises `WorkdirBusyError` if this process held `workdir`'s lease and lost it
  (looking at the lease object now)."""
  lease = _HELD.get(str(workdir).rstrip("/"))
  if lease is not None:
    lease.keep()
  if lease is not None and lease.lost:
    raise WorkdirBusyError(f"{lease.lost}; stopped without saving a checkpoint beside it")
