"""Datasets kept in an object store (`data.data_dir=gs://bucket/tensorflow_datasets`, issue 26).

ArrayRecord's reader and writer open local files only, so a prepared dataset in a bucket is
read from a local copy, made once per host (`stage`) in `$RESNET_JAX_DATA_CACHE` (default
`~/.cache/resnet_jax/datasets`), and `prepare` into a bucket prepares in that cache and
uploads (`upload`). Both copy `dataset_info.json` last: it marks a complete dataset (TFDS's
own convention), so a copy cut short is never taken for one. A local copy whose files differ
from the bucket's (its `dataset_info.json`, or a file's size) is fetched again.
"""
from __future__ import annotations

import os
import pathlib

from resnet_jax.storage import object_store

CACHE_ENV = "RESNET_JAX_DATA_CACHE"
_MARKER = "dataset_info.json"


def cache_dir(url) -> pathlib.Path:
  """The local directory that mirrors the object-store directory `url`."""
  root = pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/resnet_jax/datasets").expanduser().absolute()
  return root / object_store.scheme(url) / str(url).partition("://")[2].strip("/")


def _files(directory) -> list:
  """The files directly in `directory` (a TFDS dataset directory is flat), the marker last."""
  names = sorted(p.name for p in directory.iterdir() if not p.is_dir())
  return [n for n in names if n != _MARKER] + ([_MARKER] if _MARKER in names else [])


def _copy(source, target: pathlib.Path) -> None:
  """Copies one object to a local file through a temporary name: a copy cut short is never the file."""
  partial = target.with_name(f".{target.name}.partial-{os.getpid()}")  # processes of one host stage at once
  partial.write_bytes(source.read_bytes())
  partial.replace(target)


def stage(dataset_url) -> pathlib.Path:
  """A local copy of the prepared dataset directory `dataset_url` (`data_dir/name/version`):
  fetched again when its `dataset_info.json` differs from the bucket's (prepared anew), else
  each file whose size differs."""
  source = object_store.as_path(dataset_url)
  local = cache_dir(dataset_url)
  try:
    info = (source / _MARKER).read_bytes()
    same = (local / _MARKER).is_file() and (local / _MARKER).read_bytes() == info
    local.mkdir(parents=True, exist_ok=True)
    if not same:  # no complete copy until every file is fetched
      (local / _MARKER).unlink(missing_ok=True)
    for name in _files(source):
      target = local / name
      if not same or not target.is_file() or target.stat().st_size != (source / name).stat().length:
        _copy(source / name, target)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (fsspec clients raise many kinds)
    raise object_store.storage_error(dataset_url, e, "read") from None
  return local


def upload(local: pathlib.Path, dataset_url) -> None:
  """Copies a prepared dataset directory into the object store, `dataset_info.json` last."""
  target = object_store.as_path(dataset_url)
  try:
    for name in _files(local):
      (target / name).write_bytes((local / name).read_bytes())
  except Exception as e:  # pylint: disable=broad-except
    raise object_store.storage_error(dataset_url, e, "write") from None
