"""Datasets stored as TFDS ArrayRecord, read with `tfds.data_source` (Grain), never TensorFlow.

`TfdsSource` is the part every TFDS-backed dataset shares: where the prepared dataset
lives (`data_dir/name/version`, TFDS's layout), whether it is completely prepared,
opening a split with errors that give the `resnet-jax prepare` command, and an
idempotent `prepare` around the dataset's TF-free builder.
"""
from __future__ import annotations

import abc
import contextlib
import errno
import io
import logging
import os
import pathlib
import shutil
import sys
from typing import Optional

import tensorflow_datasets as tfds
from array_record.python import array_record_module

from resnet_jax import errors
from resnet_jax.data import remote
from resnet_jax.data.source import DatasetSource
from resnet_jax.storage import object_store

_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger


def _num_records(path: pathlib.Path) -> int:
  """Records an ArrayRecord file holds by its footer (0 when the footer is lost, e.g. truncated)."""
  try:
    reader = array_record_module.ArrayRecordReader(str(path))
  except (RuntimeError, OSError, ValueError):
    return 0
  try:
    return int(reader.num_records())
  except (RuntimeError, OSError, ValueError):
    return 0
  finally:
    try:
      reader.close()  # a damaged file reports its error again on close
    except (RuntimeError, OSError, ValueError):
      pass


class DataWriteError(errors.Error, OSError):
  """Preparing a dataset failed to write its files (disk full, read-only, permissions)."""


# What the OS says when a write fails for lack of room or rights (TensorStore, ArrayRecord
# and TFDS report it as text in a RuntimeError).
_WRITE_FAILURES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def _write_failure(error: BaseException) -> Optional[str]:
  """"no space left on device" etc. when `error` is a failed write, else None."""
  if isinstance(error, OSError) and error.errno in _WRITE_FAILURES:
    return _WRITE_FAILURES[error.errno]
  text = str(error).lower()
  return next((reason for reason in _WRITE_FAILURES.values() if reason in text), None)


class TfdsSource(DatasetSource):
  """A `DatasetSource` prepared as TFDS's own dataset of the same name and version."""
  source_hint = "--source DIR"  # what `resnet-jax prepare NAME` needs, in its error messages

  @property
  @abc.abstractmethod
  def version(self) -> str:
    """The TFDS version resnet_jax writes and reads, e.g. "3.0.2"."""

  @abc.abstractmethod
  def builder(self, source: Optional[pathlib.Path], data_dir: pathlib.Path, downloads: pathlib.Path,
              allow_partial: bool = False):
    """A `tfds.core.DatasetBuilder` writing ArrayRecord to `data_dir` from the official files
    (`allow_partial`: files with fewer records than the official ones are accepted)."""

  def dataset_dir(self, data_dir: pathlib.Path) -> pathlib.Path:
    """Where TFDS keeps the dataset at the version resnet_jax reads: `data_dir/name/version`."""
    return data_dir / self.name / self.version

  def prepare_command(self, data_dir: pathlib.Path) -> str:
    return f"resnet-jax prepare {self.name} {self.source_hint} --data-dir {data_dir}"

  def check_prepared(self, data_dir: pathlib.Path) -> Optional[pathlib.Path]:
    """The prepared dataset's directory, None when absent; raises when it is unusable.

    TFDS writes into `<version>.incomplete*` and renames at the end, so a directory
    with `dataset_info.json` was completely written; the shard files are checked too.
    """
    name, path = self.name, self.dataset_dir(data_dir)
    if not (path / "dataset_info.json").is_file():
      return None
    if object_store.is_url(path):  # its shards are checked in the local copy that is read
      return path
    builder = tfds.builder_from_directory(str(path))
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" not in formats:
      raise errors.InputError(f"{path} holds {name} as {', '.join(sorted(formats)) or 'unknown format'}; "
                       "resnet_jax reads ArrayRecord (tfds.data_source): delete it or pick another "
                       f"data dir, then run `{self.prepare_command(data_dir)}`")
    for split, info in builder.info.splits.items():
      missing = [str(p) for p in info.filepaths if not pathlib.Path(p).is_file()]
      if missing:
        raise errors.MissingError(f"{name} at {path} is incomplete: split {split!r} misses {missing[0]}; "
                                f"delete {path} and run `{self.prepare_command(data_dir)}`")
      for shard, expected in zip(info.filepaths, info.shard_lengths):
        found = _num_records(pathlib.Path(shard))
        if found != expected:
          raise errors.InputError(f"{name} shard {shard} is damaged (truncated or overwritten): it holds {found} "
                           f"records, dataset_info.json says {expected}; delete {path} and run "
                           f"`{self.prepare_command(data_dir)}`")
    return path

  def open_split(self, split: str, data_dir: pathlib.Path, decode_images: bool = True):
    """`tfds.builder(name).as_data_source(split)`, with errors that say how to prepare."""
    name = self.name
    if object_store.is_url(data_dir):
      object_store.check_reachable(data_dir)
      if self.check_prepared(data_dir) is None:
        raise errors.MissingError(f"{name} is not prepared in {data_dir}; run `{self.prepare_command(data_dir)}`")
      data_dir = remote.stage(self.dataset_dir(data_dir)).parents[1]
    self.check_prepared(data_dir)  # a present but unusable dataset raises here
    builder = tfds.builder(name, data_dir=str(data_dir))
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    try:
      return builder.as_data_source(split=split, decoders=decoders)
    except (AssertionError, FileNotFoundError, NotImplementedError) as e:  # TFDS's ways of saying so
      raise errors.MissingError(f"{name} is not prepared in {data_dir}; run `{self.prepare_command(data_dir)}`") from e
    except (KeyError, ValueError) as e:
      reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
      raise errors.InputError(f"bad split {split!r} for {name} ({reason}); valid: "
                       f"{', '.join(builder.info.splits.keys())} with TFDS slicing, "
                       "e.g. 'train[:45000]'") from e

  def prepare(self, source: Optional[str | os.PathLike], data_dir: pathlib.Path,
              allow_partial: bool = False) -> pathlib.Path:
    """Idempotent: a prepared dataset is returned as it is, without looking at `source`.

    A full disk (or an unwritable data dir) is a `DataWriteError` in one line; TFDS has
    removed the partial files by then.
    """
    object_store.check_reachable(data_dir)
    done = self.check_prepared(data_dir)
    if done is not None:
      _LOG.info("%s is already prepared in %s", self.name, done)
      return done
    if object_store.is_url(data_dir):  # ArrayRecord writes local files: prepared in the cache, uploaded
      local = self.prepare(source, remote.cache_dir(data_dir), allow_partial)
      remote.upload(local, self.dataset_dir(data_dir))
      return self.dataset_dir(data_dir)
    downloads = data_dir / "downloads"
    source = None if source is None else pathlib.Path(source).expanduser().absolute()
    builder = self.builder(source, data_dir, downloads, allow_partial)
    # TFDS's progress bars move the cursor: only on a terminal. Its two lines around them ("...
    # Unknown size ...", "... downloaded and prepared ...") say less than `prepare`'s own.
    tfds.display_progress_bar(sys.stderr.isatty())
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            try_download_gcs=False), download_dir=str(downloads))
    except (OSError, RuntimeError) as e:
      reason = _write_failure(e)
      if reason is None:
        raise
      raise DataWriteError(f"cannot write {self.name} to {data_dir}: {reason} (the partial files were "
                           "removed); free space or fix the directory, or pass another --data-dir") from None
    done = self.check_prepared(data_dir)
    if done is None:
      raise errors.MissingError(f"preparing {self.name} wrote no {self.dataset_dir(data_dir)}/dataset_info.json")
    shutil.rmtree(downloads / "extracted", ignore_errors=True)  # extracted archives, TFDS's scratch
    return done
