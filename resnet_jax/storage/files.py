"""A workdir's small files, read and written one safe way: never through links, whole files
atomically, JSON lines tolerant of a crash mid-write.

Besides its checkpoints (Orbax's), a training workdir holds `config.json`, `workdir.json`,
`metrics.jsonl`, `sessions.jsonl`, `.lock`, `preprocessing.json` and, in a study,
`result.json` (`workdir.Workdir` names them). Every access to them goes through a backend of
this module, chosen once per directory by `files_for` (the one place that asks whether a
path is an object-store URL), so each promise holds for all of them:

* `LocalFiles`: a file is opened with `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO cannot block
  the opener); a symbolic link, directory or device where a file is expected is refused in
  one line (`NotAFileError`) instead of having its target truncated. Whole files are
  replaced atomically (temporary file beside it, fsync, rename): a reader, or the next run
  after a crash, sees the old content or the new one. JSON lines are appended one record
  per write (`JsonlAppender`); a file whose last line a crash cut short is continued on a
  fresh line, and `read_jsonl` skips the lines that are not complete records and reports them.
* `ObjectFiles` (`gs://bucket/runs/x`, through `etils.epath`): an object is replaced whole by
  each upload, which is atomic as above; it has no links; and it cannot be appended to, so
  `open_jsonl` gives an `ObjectJsonlAppender` that keeps the records and rewrites the
  object (at most every `OBJECT_REWRITE_SECONDS`, and on `flush`/`close`), reading what the
  object held first, so that a resumed run keeps every earlier record once.

`sha256_hex`/`json_digest` are the one way digests are made (checkpoint checksums). Failures
are `WorkdirError`s with one-line messages naming the file.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import stat
import time
from typing import Any, Callable, Dict, List, Optional

from resnet_jax import errors
from resnet_jax.storage import object_store
from resnet_jax.storage.object_store import is_url  # noqa: F401  (re-exported)

Log = Callable[[str], None]
# GCS sustains about one update per second of one object; a metrics file is rewritten at most
# this often (and whenever the run saves a checkpoint or ends).
OBJECT_REWRITE_SECONDS = 5.0

_NO_LINKS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WorkdirError(errors.Error, RuntimeError):
  """The workdir cannot be used by this run; the message says why and what to do."""
  exit_code = 2


class NotAFileError(WorkdirError):
  """A link, directory or device is where the workdir keeps a regular file."""


class WorkdirWriteError(WorkdirError):
  """A workdir file could not be written (disk full, read-only, permissions)."""
  exit_code = 1


def as_path(path: str | os.PathLike):
  """A workdir path: an `etils.epath.Path` for an object-store URL (never made "absolute",
  which would mangle it), else an absolute `pathlib.Path`."""
  if is_url(path):
    return object_store.as_path(path)
  return pathlib.Path(path).absolute()


# Characters a workdir's path cannot hold. Orbax finds the parts of a checkpoint with glob
# patterns of the whole path (etils' `glob.glob`), where `[` `]` `*` `?` are wildcards: under
# `run[seed=1]` the arrays' index was never written and every checkpoint was lost, and `*` or `?`
# would match a neighbour's files. TensorStore's file driver takes `\` for a folder separator (the
# arrays of `back\slash` went to `back/slash`). A control character would break one-line messages.
REFUSED_PATH_CHARACTERS = re.compile(r"[\[\]*?\\\x00-\x1f\x7f]")


def check_path(path: str | os.PathLike) -> None:
  """Refuses, in one line, a workdir path that the checkpoint libraries would misread
  (`REFUSED_PATH_CHARACTERS`); every other character (spaces, `%`, unicode, a leading `-`)
  works end to end."""
  text = os.fspath(path)
  found = sorted(set(REFUSED_PATH_CHARACTERS.findall(text)))
  if found:
    raise WorkdirError(
        f"workdir {text!r} contains {' '.join(repr(c) for c in found)}: the checkpoint libraries read "
        "'[' ']' '*' '?' in a path as wildcards and '\\' as a folder separator, so its checkpoints would be "
        f"unreadable (and control characters are refused); use another name, e.g. "
        f"{REFUSED_PATH_CHARACTERS.sub('_', text)!r}")


def _reason(error: OSError) -> str:
  return error.strerror or type(error).__name__


def _what_is(path: pathlib.Path) -> str:
  """What `path` is when it is not a regular file, in words."""
  try:
    mode = os.lstat(path).st_mode
  except OSError:
    return "not a regular file"
  if stat.S_ISLNK(mode):
    return f"a symbolic link (to {os.readlink(path)})"
  if stat.S_ISDIR(mode):
    return "a directory"
  if stat.S_ISFIFO(mode):
    return "a FIFO"
  if stat.S_ISSOCK(mode):
    return "a socket"
  return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def not_a_file(path: str | os.PathLike) -> NotAFileError:
  path = pathlib.Path(path)
  return NotAFileError(f"{path} is {_what_is(path)}, where the workdir keeps a regular file; resnet_jax "
                       "never reads or writes workdir files through links: remove it, or use another --workdir")


def open_file(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
  """`os.open` of a regular local file, never through a link; the file descriptor.

  Raises `NotAFileError` for a link, directory, FIFO or device, and the `OSError` of the
  open otherwise (FileNotFoundError for a missing file without `O_CREAT`).
  """
  try:
    fd = os.open(path, flags | _NO_LINKS, mode)
  except OSError as e:
    if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
      raise not_a_file(path) from None
    raise
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise not_a_file(path)
  return fd


def _write_all(fd: int, payload: bytes) -> None:
  view = memoryview(payload)
  while view:
    view = view[os.write(fd, view):]


def _fsync_directory(directory: pathlib.Path) -> None:
  """Makes a rename in `directory` durable; some filesystems cannot, which only costs durability."""
  try:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _report_cut_short(path: str | os.PathLike, log: Optional[Log]) -> None:
  if log is not None:
    log(f"{path}: its last line was cut short (a crash while writing it); it is kept, "
        "and new records start on a fresh line")


def _encoded(data: str | bytes) -> bytes:
  return data.encode("utf-8") if isinstance(data, str) else data


class JsonlAppender:
  """Appends JSON records, one line each, to a local `.jsonl` file (created when missing).

  Each record is one `write` to a file opened with `O_APPEND`, so a crash leaves at most
  its last line incomplete; opening a file whose last line is incomplete reports it
  through `log` and starts on a fresh line, so that line stays the only damage.
  """

  def __init__(self, path: str | os.PathLike, log: Optional[Log] = None):
    self.path = pathlib.Path(path)
    try:
      self._fd: Optional[int] = open_file(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    except OSError as e:
      raise WorkdirWriteError(f"cannot write {self.path}: {_reason(e)}") from None
    try:
      size = os.fstat(self._fd).st_size
      if size and os.pread(self._fd, 1, size - 1) != b"\n":
        self._write(b"\n")
        _report_cut_short(self.path, log)
    except BaseException:
      self.close()
      raise

  def _write(self, payload: bytes) -> None:
    try:
      _write_all(self._fd, payload)
    except OSError as e:
      raise WorkdirWriteError(f"cannot write {self.path}: {_reason(e)}") from None

  def append(self, record: Dict[str, Any]) -> None:
    self._write((json.dumps(record) + "\n").encode("utf-8"))

  def flush(self) -> None:
    """Nothing to do: each record is written when appended."""

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


class ObjectJsonlAppender:
  """`JsonlAppender` for an object store: the records are kept and the whole object rewritten
  (module docstring); `flush` writes what is pending now."""

  def __init__(self, files: "ObjectFiles", path, log: Optional[Log] = None,
               min_interval: float = OBJECT_REWRITE_SECONDS):
    self.files, self.path = files, path
    try:
      content = files.read_bytes(path)
    except FileNotFoundError:
      content = b""
    except OSError as e:
      raise WorkdirWriteError(str(e)) from None
    if content and not content.endswith(b"\n"):
      _report_cut_short(path, log)
      content += b"\n"
      self._pending = True
    else:
      self._pending = False
    self._content = bytearray(content)
    self._min_interval = min_interval
    self._written = -float("inf")

  def append(self, record: Dict[str, Any]) -> None:
    self._content += (json.dumps(record) + "\n").encode("utf-8")
    self._pending = True
    if time.monotonic() - self._written >= self._min_interval:
      self.flush()

  def flush(self) -> None:
    if self._pending:
      self.files.write_atomic(self.path, bytes(self._content))
      self._pending, self._written = False, time.monotonic()

  def close(self) -> None:
    self.flush()


def parse_jsonl(text: str, path: Any, log: Optional[Log] = None) -> List[Dict[str, Any]]:
  """The complete JSON-object lines of `text`; the others (cut short by a crash) are skipped
  and reported through `log` in one line."""
  records, torn = [], []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict):
      records.append(record)
    else:
      torn.append(number)
  if torn and log is not None:
    log(f"{path}: skipped {len(torn)} line(s) that are not complete records, cut short by a crash "
        f"(line {', '.join(map(str, torn[:5]))}{', ...' if len(torn) > 5 else ''})")
  return records


class _Files:
  """What every backend offers on top of its primitives (`read_bytes`, `write_atomic`,
  `open_jsonl`, `make_dirs`, `move_tree`, `is_file`, `is_dir`)."""

  def read_text(self, path) -> str:
    return self.read_bytes(path).decode("utf-8", errors="replace")

  def write_json(self, path, value: Any, indent: Optional[int] = None) -> None:
    self.write_atomic(path, json.dumps(value, indent=indent, sort_keys=True, default=str) + "\n")

  def append_jsonl(self, path, record: Dict[str, Any], log: Optional[Log] = None) -> None:
    """One record appended to `path` (see `JsonlAppender`)."""
    appender = self.open_jsonl(path, log)
    try:
      appender.append(record)
    finally:
      appender.close()

  def read_jsonl(self, path, log: Optional[Log] = None) -> List[Dict[str, Any]]:
    """The records of a `.jsonl` file in order ([] when it does not exist); see `parse_jsonl`."""
    try:
      text = self.read_text(path)
    except FileNotFoundError:
      return []
    return parse_jsonl(text, path, log)


class LocalFiles(_Files):
  """Files of this machine's filesystem (module docstring)."""

  def read_bytes(self, path) -> bytes:
    """The content of a regular file; FileNotFoundError when there is none."""
    try:
      fd = open_file(path, os.O_RDONLY)
    except FileNotFoundError:
      raise
    except OSError as e:  # permissions, I/O errors
      raise WorkdirError(f"cannot read {path}: {_reason(e)}") from None
    try:
      with os.fdopen(fd, "rb") as f:
        return f.read()
    except OSError as e:
      raise WorkdirError(f"cannot read {path}: {_reason(e)}") from None

  def refuse_non_file(self, path) -> None:
    """Raises `NotAFileError` if something other than a regular file is at `path`."""
    try:
      mode = os.lstat(path).st_mode
    except FileNotFoundError:
      return
    if not stat.S_ISREG(mode):
      raise not_a_file(path)

  def write_atomic(self, path, data: str | bytes) -> None:
    """Replaces `path` with `data` atomically (temporary file, fsync, rename).

    A link at `path` is refused (`NotAFileError`), never followed; the rename replaces a
    directory entry, so even a link created meanwhile is replaced, not written through.
    Failures raise `WorkdirWriteError` and leave the old file as it was.
    """
    path = pathlib.Path(path)
    self.refuse_non_file(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
      fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
      try:
        _write_all(fd, _encoded(data))
        os.fsync(fd)
      finally:
        os.close(fd)
      os.replace(temporary, path)
    except OSError as e:
      try:
        os.unlink(temporary)
      except OSError:
        pass
      raise WorkdirWriteError(f"cannot write {path}: {_reason(e)}") from None
    _fsync_directory(path.parent)

  def open_jsonl(self, path, log: Optional[Log] = None) -> JsonlAppender:
    return JsonlAppender(path, log)

  def make_dirs(self, path) -> None:
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)

  def move_tree(self, source, target) -> None:
    pathlib.Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))

  def is_file(self, path) -> bool:
    return pathlib.Path(path).is_file()

  def is_dir(self, path) -> bool:
    return pathlib.Path(path).is_dir()


class ObjectFiles(_Files):
  """Objects of a bucket (`gs://`), through `etils.epath` (module docstring)."""

  def read_bytes(self, path) -> bytes:
    """The content of an object; FileNotFoundError when there is none."""
    try:
      return object_store.as_path(path).read_bytes()
    except FileNotFoundError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (fsspec clients raise many kinds)
      raise object_store.storage_error(path, e, "read") from None

  def refuse_non_file(self, path) -> None:
    """An object store has no links: nothing to refuse."""

  def write_atomic(self, path, data: str | bytes) -> None:
    """Uploads `data` as the whole object, which replaces it atomically."""
    try:
      object_store.as_path(path).write_bytes(_encoded(data))
    except Exception as e:  # pylint: disable=broad-except
      raise WorkdirWriteError(str(object_store.storage_error(path, e, "write"))) from None

  def open_jsonl(self, path, log: Optional[Log] = None) -> ObjectJsonlAppender:
    return ObjectJsonlAppender(self, path, log)

  def make_dirs(self, path) -> None:
    """An object store has no directories to create."""

  def move_tree(self, source, target) -> None:
    """Moves every object under the prefix (copied, then deleted)."""
    object_store.move_prefix(source, target)

  def is_file(self, path) -> bool:
    return object_store.as_path(path).is_file()

  def is_dir(self, path) -> bool:
    return object_store.as_path(path).is_dir()


_LOCAL, _OBJECTS = LocalFiles(), ObjectFiles()


def files_for(path: str | os.PathLike) -> LocalFiles | ObjectFiles:
  """The backend of `path`: the one place that decides between a local path and a URL."""
  return _OBJECTS if is_url(path) else _LOCAL


def sha256_hex(data: bytes | memoryview) -> str:
  return hashlib.sha256(data).hexdigest()


def json_digest(value: Any) -> str:
  """The digest of a JSON value, independent of key order and of tuple vs list."""
  return sha256_hex(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8"))
