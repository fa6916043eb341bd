"""Workdirs and datasets on an object store (`gs://bucket/...`, issue 26): paths, one-line
errors, and the conditional writes the workdir lease needs.

* `is_url(path)`: whether a path names an object store (a `scheme://` other than `file://`);
  `as_path(url)` is its `etils.epath.Path` (fsspec underneath: gcsfs for `gs://`).
* `check_reachable(url)` probes the server and the bucket once, so that a missing bucket, a
  refused credential or a server that does not answer is one line naming the path and what
  to do (`StorageError`), not a minute of client retries ending in a traceback;
  `storage_error(url, error)` turns a client's failure into the same kind of line.
* `read_object`, `write_object(..., if_generation=)`, `delete_object`: GCS's generation
  preconditions (create-if-absent is `if_generation=0`), the primitives of the lease lock
  (`resnet_jax.storage.lease`); only `gs://` has them here.

Emulators are reached through the clients' own settings: `STORAGE_EMULATOR_HOST` (gcsfs,
the Python clients) and `TENSORSTORE_GCS_HTTP_URL` with `GOOGLE_AUTH_TOKEN_FOR_TESTING`
(TensorStore, under Orbax's checkpoints).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import urllib.parse
from typing import Any, Optional, Tuple

from resnet_jax import errors

GCS_ENDPOINT = "https://storage.googleapis.com"
_CONNECT_TIMEOUT_S = 5.0


class StorageError(errors.Error, OSError):
  """An object store refused or could not serve a path; the message says why and what to do."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else super().__str__()


def is_url(path: Any) -> bool:
  text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
  scheme, sep, _ = text.partition("://")
  return bool(sep) and scheme.isalnum() and scheme != "file"


def scheme(url: Any) -> str:
  return str(url).partition("://")[0]


class _NoClientTracebacks(logging.Filter):
  """gcsfs logs each request that ran out of retries with the tracebacks of aiohttp's attempts
  (pages while a server is down); the failure reaches resnet_jax as an exception, reported in one
  line (`storage_error`), so those records are dropped (gcsfs's other messages pass)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.exc_info


_QUIET = _NoClientTracebacks()


def _quiet_clients() -> None:
  """Installs `_NoClientTracebacks` on gcsfs's logger (once; before gcsfs is first used)."""
  logger = logging.getLogger("gcsfs")
  if _QUIET not in logger.filters:
    logger.addFilter(_QUIET)


def as_path(url: Any):
  from etils import epath  # pylint: disable=import-outside-toplevel
  _quiet_clients()
  return epath.Path(str(url))


def bucket_of(url: Any) -> str:
  return str(url).partition("://")[2].split("/", 1)[0]


def _filesystem(url: Any):
  """`(fsspec filesystem, path without scheme)` of `url`."""
  import fsspec  # pylint: disable=import-outside-toplevel
  _quiet_clients()
  try:
    return fsspec.core.url_to_fs(str(url))
  except ImportError as e:  # fsspec names the package its protocol needs
    raise StorageError(f"cannot use {url}: {e}; gs:// needs gcsfs: pip install 'resnetax[gcs]'") from None


def endpoint(url: Any) -> str:
  """The server a `gs://` URL is served by (an emulator's when STORAGE_EMULATOR_HOST is set)."""
  host = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if scheme(url) != "gs" or host in ("", "default"):
    return GCS_ENDPOINT
  return host if "://" in host else f"http://{host}"


def _code(error: BaseException) -> Optional[int]:
  """The HTTP status of a gcsfs failure (HttpError.code; gcsfs raises 403 as "Forbidden: ...")."""
  code = getattr(error, "code", None)
  if isinstance(code, int):
    return code
  return 403 if str(error).startswith("Forbidden") else None


def storage_error(url: Any, error: BaseException, doing: str = "use") -> StorageError:
  """A one-line `StorageError` for a client's `error` on `url` (401, 403, 404, no server)."""
  if isinstance(error, StorageError):
    return error
  code, bucket = _code(error), bucket_of(url)
  first = (str(error).strip().splitlines() or [type(error).__name__])[0]
  if code == 401 or "credentials" in first.lower():
    why = ("no valid credentials: run `gcloud auth application-default login`, or set "
           "GOOGLE_APPLICATION_CREDENTIALS to a service-account key (on a TPU VM, the VM's service account)")
  elif code == 403:
    why = (f"permission denied: the account needs read and write access to objects of bucket {bucket} "
           "(e.g. roles/storage.objectAdmin)")
  elif isinstance(error, (ConnectionError, TimeoutError)) or "connect" in first.lower():
    why = f"the storage server {endpoint(url)} does not answer ({first}); check the network, or STORAGE_EMULATOR_HOST"
  else:
    why = first
  return StorageError(f"cannot {doing} {url}: {why}")


def _probe_server(url: Any) -> None:
  parts = urllib.parse.urlsplit(endpoint(url))
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise StorageError(f"cannot reach {url}: the storage server {endpoint(url)} does not answer "
                       f"({e.strerror or type(e).__name__}); check the network, or STORAGE_EMULATOR_HOST") from None


def check_reachable(url: Any) -> None:
  """Raises a one-line `StorageError` unless `url`'s server answers and its bucket exists and
  lets this account in; does nothing for local paths and for schemes other than `gs://`."""
  if not is_url(url) or scheme(url) != "gs":
    return
  _probe_server(url)
  fs, path = _filesystem(url)
  bucket, _, prefix = path.partition("/")
  try:  # listing needs only storage.objects.list, which any role that trains in the bucket has
    fs.call("GET", "b/{}/o", bucket, maxResults=1, prefix=prefix, json_out=True)
  except FileNotFoundError:
    raise StorageError(f"cannot use {url}: bucket gs://{bucket} does not exist; create it "
                       f"(gcloud storage buckets create gs://{bucket}) or fix the path") from None
  except Exception as e:  # pylint: disable=broad-except  (gcsfs raises HttpError, OSError, auth errors)
    raise storage_error(url, e) from None


def move_prefix(source: Any, target: Any) -> None:
  """Moves every object under `source` to `target` (copies, then deletes the originals)."""
  fs, source_path = _filesystem(source)
  _, target_path = _filesystem(target)
  try:  # copy, then delete (gcsfs's `mv` first tries a move API that not every server has)
    fs.copy(source_path, target_path, recursive=True)
    fs.rm(source_path, recursive=True)
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(source, e, "move") from None
  _forget_listings(fs, source_path)


def _forget_listings(fs: Any, path: str) -> None:
  """Drops the cached listings at and under `path` of every client of `fs`'s kind (etils, under
  Orbax, has its own; gcsfs's `invalidate_cache` keeps the folders under a path): Orbax would
  otherwise find a moved checkpoint that is gone."""
  prefix = path.rstrip("/")
  for client in list(getattr(type(fs), "_cache", {}).values()) or [fs]:
    for key in [k for k in getattr(client, "dircache", {}) if k == prefix or k.startswith(prefix + "/")]:
      client.dircache.pop(key, None)
    client.invalidate_cache(prefix)


def _gcs_object(url: Any) -> Tuple[Any, str, str, str]:
  """`(gcsfs filesystem, path, bucket, key)` of a `gs://` object."""
  if scheme(url) != "gs":
    raise StorageError(f"{url}: the workdir lease needs generation preconditions, which resnet_jax "
                       "implements for gs:// only; train in a gs:// or local --workdir")
  fs, path = _filesystem(url)
  bucket, key = path.split("/", 1)
  return fs, path, bucket, key


def read_object(url: Any) -> Tuple[Optional[bytes], Optional[int]]:
  """`(content, generation)` of an object; `(None, None)` when there is none."""
  fs, path, bucket, key = _gcs_object(url)
  try:  # content and generation from one response: no other write can come between them
    headers, data = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media")
    generation = int({k.lower(): v for k, v in headers.items()}["x-goog-generation"])
  except FileNotFoundError:
    return None, None
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(url, e, "read") from None
  return data, generation


def write_object(url: Any, data: bytes, if_generation: int) -> Optional[int]:
  """Writes `url` only if its live generation is `if_generation` (0: only if absent); the new
  generation, or None when the precondition failed (another writer got there first)."""
  fs, path, bucket, key = _gcs_object(url)
  # A multipart upload as gcsfs makes them, through gcsfs's authenticated client; gcsfs itself
  # offers only create-if-absent (mode="create"), not a match on another generation.
  body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n'
          + json.dumps({"name": key}).encode() + b"\n--==0==\nContent-Type: application/octet-stream\n\n"
          + data + b"\n--==0==--")
  try:
    out = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o",  # pylint: disable=protected-access
                  uploadType="multipart", ifGenerationMatch=str(int(if_generation)), data=body,
                  headers={"Content-Type": 'multipart/related; boundary="==0=="'}, json_out=True)
  except FileExistsError:  # gcsfs's reading of 412 Precondition Failed
    return None
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(url, e, "write") from None
  fs.invalidate_cache(path)
  return int(out["generation"])


def delete_object(url: Any, if_generation: int) -> None:
  """Deletes `url` if its live generation is `if_generation` (GCS checks the precondition; the
  emulator of the tests does not); a missing object is no error."""
  fs, path, bucket, key = _gcs_object(url)
  try:
    fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(int(if_generation)))
  except (FileNotFoundError, FileExistsError):
    pass
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(url, e, "delete") from None
  fs.invalidate_cache(path)
