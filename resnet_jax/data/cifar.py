"""CIFAR-10/100 (Krizhevsky 2009) from the official files, prepared as TFDS ArrayRecord without TensorFlow.

The prepared dataset is TFDS's own `cifar10` / `cifar100` (same name, version 3.0.2,
features `id`, `image`, `label` [, `coarse_label`], same example keys and therefore
the same record order), so plain TFDS reads it and an existing TFDS CIFAR prepared as
ArrayRecord is read by `resnet_jax` too. Only the generation differs: the official
builder encodes PNGs with TensorFlow, this one with Pillow (same pixels).

`CifarSource` is the dataset the pipeline reads (registered as "cifar10" and "cifar100"):
the in-memory small-image family of `small_images.py`, prepared from these files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import pickle
import tarfile
import urllib.error
import urllib.request
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image
from tensorflow_datasets.image_classification import cifar as tfds_cifar

from resnet_jax import errors
from resnet_jax.data.small_images import SmallImageSource
from resnet_jax.data.source import DatasetInfo

IMAGE_SHAPE = (32, 32, 3)
RECORD_PIXELS = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one official CIFAR format keeps its files (www.cs.toronto.edu/~kriz/cifar.html)."""
  folder: str                   # folder inside the archive
  archive: str                  # official archive name
  train_files: Tuple[str, ...]
  test_files: Tuple[str, ...]
  meta_file: str                # label names
  binary: bool


LAYOUTS: Dict[str, Tuple[Layout, ...]] = {
    "cifar10": (
        Layout("cifar-10-batches-bin", "cifar-10-binary.tar.gz",
               tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
               "batches.meta.txt", True),
        Layout("cifar-10-batches-py", "cifar-10-python.tar.gz",
               tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", False),
    ),
    "cifar100": (
        Layout("cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), ("test.bin",),
               "fine_label_names.txt", True),
        Layout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta", False),
    ),
}
# TFDS's label keys in the binary records' byte order (CIFAR-100: coarse byte first).
LABEL_KEYS = {"cifar10": ("label",), "cifar100": ("coarse_label", "label")}
NUM_CLASSES = {"label": {"cifar10": 10, "cifar100": 100}, "coarse_label": {"cifar100": 20}}
SPLIT_SIZES = {"train": 50000, "test": 10000}
# Records in each official file: a file cut at a record boundary reads as valid, only
# fewer images. `read_files` checks the training files (unless asked to prepare a subset);
# a shorter test file is accepted (a held-out subset, e.g. the first 1,000 test images) and
# its count is printed by `prepare` and in every evaluation line.
OFFICIAL_RECORDS = {"cifar10": {"train": 10000, "test": 10000}, "cifar100": {"train": 50000, "test": 10000}}
DOWNLOAD_TIMEOUT_S = 30
OFFICIAL_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                 "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),
}


@dataclasses.dataclass
class CifarSplit:
  images: np.ndarray            # uint8 [N, 32, 32, 3]
  labels: Dict[str, np.ndarray]  # TFDS label key -> int64 [N]


@dataclasses.dataclass
class CifarFiles:
  """One CIFAR dataset read from the official files, in the official order."""
  label_names: Dict[str, List[str]]
  splits: Dict[str, CifarSplit]


def _archive_for(name: str, path: pathlib.Path) -> Optional[Layout]:
  for layout in LAYOUTS[name]:
    if path.name == layout.archive or path.name.startswith(layout.archive.split(".")[0] + "."):
      return layout
  return None


def _folder_layout(name: str, path: pathlib.Path) -> Optional[Tuple[Layout, pathlib.Path]]:
  """The official layout found in `path` itself or in its official subfolder."""
  for layout in LAYOUTS[name]:
    for folder in (path, path / layout.folder):
      if all((folder / f).is_file() for f in layout.train_files + layout.test_files):
        return layout, folder
  return None


def _expected(name: str) -> str:
  return "; ".join(f"{l.folder}/ ({', '.join(l.train_files + l.test_files)}) or {l.archive}"
                   for l in LAYOUTS[name])


def extract_archive(name: str, archive: pathlib.Path, extract_root: pathlib.Path) -> pathlib.Path:
  """Extracts an official CIFAR archive once; returns the folder holding its files."""
  layout = _archive_for(name, archive)
  if layout is None:
    raise errors.InputError(f"{archive} is not an official {name} archive; expected one of: "
                     f"{', '.join(l.archive for l in LAYOUTS[name])}")
  target = extract_root / archive.name.split(".")[0]
  done = target / ".extracted"
  if not done.is_file():
    target.mkdir(parents=True, exist_ok=True)
    try:
      with tarfile.open(archive, "r:*") as tar:
        tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
      raise errors.InputError(f"cannot extract {archive} ({e}); the archive is corrupt or incomplete: "
                       "download it again") from e
    done.touch()
  found = _folder_layout(name, target)
  if found is None:
    raise errors.InputError(f"{archive} holds no official {name} files; expected {_expected(name)}")
  return found[1]


def find_source(name: str, source: pathlib.Path, extract_root: pathlib.Path) -> pathlib.Path:
  """The folder with the official files, from a folder, its parent or an archive."""
  if not source.exists():
    raise errors.MissingError(f"{name} source {source} does not exist; pass a folder or archive "
                            f"in an official layout: {_expected(name)}")
  if source.is_file():
    return extract_archive(name, source, extract_root)
  found = _folder_layout(name, source)
  if found is not None:
    return found[1]
  for layout in LAYOUTS[name]:
    if (source / layout.archive).is_file():
      return extract_archive(name, source / layout.archive, extract_root)
  raise errors.MissingError(f"no official {name} files in {source}; expected {_expected(name)}")


def _read_binary(path: pathlib.Path, num_labels: int) -> Tuple[np.ndarray, np.ndarray]:
  """Records of `num_labels` label bytes then 1024 R, 1024 G, 1024 B bytes (row-major)."""
  data = np.fromfile(path, dtype=np.uint8)
  record = num_labels + RECORD_PIXELS
  if data.size == 0 or data.size % record:
    raise errors.InputError(f"corrupt CIFAR file {path}: {data.size} bytes is not a positive multiple of "
                     f"the {record}-byte record; replace it with the official file")
  data = data.reshape(-1, record)
  images = data[:, num_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), data[:, :num_labels].astype(np.int64)


def _unpickle(path: pathlib.Path) -> dict:
  try:
    with open(path, "rb") as f:
      return pickle.load(f, encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise errors.InputError(f"corrupt CIFAR file {path} ({e}); replace it with the official file") from e


def _read_python(path: pathlib.Path, keys: Tuple[bytes, ...]) -> Tuple[np.ndarray, np.ndarray]:
  batch = _unpickle(path)
  try:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.stack([np.asarray(batch[k], dtype=np.int64) for k in keys], axis=1)
  except (KeyError, TypeError, ValueError) as e:
    raise errors.InputError(f"corrupt CIFAR file {path}: no {e} entry of the official layout") from e
  if data.ndim != 2 or data.shape[1] != RECORD_PIXELS or len(labels) != len(data):
    raise errors.InputError(f"corrupt CIFAR file {path}: data shape {data.shape} for {len(labels)} labels, "
                     f"expected [N, {RECORD_PIXELS}]")
  return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _label_names(name: str, layout: Layout, folder: pathlib.Path) -> Dict[str, List[str]]:
  if layout.binary:
    files = {"label": layout.meta_file}
    if name == "cifar100":
      files["coarse_label"] = "coarse_label_names.txt"
    names = {}
    for key, file in files.items():
      path = folder / file
      if not path.is_file():
        raise errors.MissingError(f"label names file {path} is missing; it ships with the official "
                                f"{layout.archive}")
      names[key] = [n.strip() for n in path.read_text().splitlines() if n.strip()]
  else:
    meta = _unpickle(folder / layout.meta_file)
    pick = {"label": b"label_names"} if name == "cifar10" else {
        "label": b"fine_label_names", "coarse_label": b"coarse_label_names"}
    names = {k: [n.decode() if isinstance(n, bytes) else str(n) for n in meta[v]] for k, v in pick.items()}
  for key, values in names.items():
    if len(values) != NUM_CLASSES[key][name]:
      raise errors.InputError(f"{folder / layout.meta_file}: {len(values)} {key} names, expected "
                       f"{NUM_CLASSES[key][name]}")
  return names


def _check_official_count(name: str, split: str, path: pathlib.Path, count: int) -> None:
  expected = OFFICIAL_RECORDS[name][split]
  if count != expected:
    raise errors.InputError(f"{path} holds {count:,} records, the official file {expected:,} (cut short, or not the "
                     f"official file): replace it with the official file, or pass --allow-partial "
                     f"(allow_partial=True) to prepare the records it holds")


def read_files(name: str, folder: str | pathlib.Path, allow_partial: bool = False) -> CifarFiles:
  """Reads every split of an official CIFAR folder (binary or python layout).

  Each training file must hold its official number of records (`OFFICIAL_RECORDS`) unless
  `allow_partial` (a subset, e.g. for tests); a test file may hold fewer (a subset of the
  held-out images, whose count every evaluation reports), never more.
  """
  folder = pathlib.Path(folder).expanduser()
  found = _folder_layout(name, folder)
  if found is None:
    raise errors.MissingError(f"no official {name} files in {folder}; expected {_expected(name)}")
  layout, folder = found
  keys = LABEL_KEYS[name]
  python_keys = (b"labels",) if name == "cifar10" else (b"coarse_labels", b"fine_labels")
  splits, counts = {}, []
  for split, files in (("train", layout.train_files), ("test", layout.test_files)):
    parts = [_read_binary(folder / f, len(keys)) if layout.binary else _read_python(folder / f, python_keys)
             for f in files]
    counts += [(split, folder / f, len(part[0])) for f, part in zip(files, parts)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    for i, key in enumerate(keys):
      bad = np.flatnonzero(labels[:, i] >= NUM_CLASSES[key][name])
      if bad.size:
        raise errors.InputError(f"corrupt {name} {split} record {bad[0]} in {folder}: {key} "
                         f"{labels[bad[0], i]} is not below {NUM_CLASSES[key][name]}")
    splits[split] = CifarSplit(images, {k: labels[:, i] for i, k in enumerate(keys)})
  for split, path, count in counts:
    if count > OFFICIAL_RECORDS[name][split] or (split == "train" and not allow_partial):
      _check_official_count(name, split, path, count)
  return CifarFiles(_label_names(name, layout, folder), splits)


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


class _FromFilesMixin:
  """Overrides the official builders' TensorFlow-dependent generation with in-memory arrays."""

  def __init__(self, *, files: CifarFiles, **kwargs):
    self._files = files
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):  # pylint: disable=unused-argument
    for key, names in self._files.label_names.items():
      self.info.features[key].names = names
    return {split: self._generate_examples(f"{split}_", split) for split in self._files.splits}

  def _generate_examples(self, split_prefix: str, split: str) -> Iterator[Tuple[int, dict]]:
    data = self._files.splits[split]
    for index in range(len(data.images)):
      record = {key: int(values[index]) for key, values in data.labels.items()}
      record["id"] = f"{split_prefix}{index:05d}"
      record["image"] = encode_png(data.images[index])
      yield index, record  # the official keys: same TFDS shuffling, same record order


class Cifar10FromFiles(_FromFilesMixin, tfds_cifar.Cifar10, skip_registration=True):
  name = "cifar10"


class Cifar100FromFiles(_FromFilesMixin, tfds_cifar.Cifar100, skip_registration=True):
  name = "cifar100"


BUILDERS = {"cifar10": Cifar10FromFiles, "cifar100": Cifar100FromFiles}


def download_official(name: str, download_dir: pathlib.Path) -> pathlib.Path:
  """Downloads the official archive (checked against TFDS's SHA-256); fails fast offline."""
  url, sha256 = OFFICIAL_URLS[name]
  target = download_dir / url.rsplit("/", 1)[1]
  if target.is_file():
    return target
  download_dir.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(target.name + ".part")
  digest = hashlib.sha256()
  try:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as f:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
  except (urllib.error.URLError, OSError) as e:
    partial.unlink(missing_ok=True)
    raise errors.MissingError(f"cannot download {url} ({e}); download it where there is network and "
                            f"run `resnet-jax prepare {name} --source {target.name}`") from e
  if digest.hexdigest() != sha256:
    partial.unlink(missing_ok=True)
    raise errors.InputError(f"{url} downloaded with SHA-256 {digest.hexdigest()}, expected {sha256}; retry")
  partial.rename(target)
  return target


class CifarSource(SmallImageSource):
  """CIFAR-10 or CIFAR-100 (Krizhevsky 2009): 32×32 RGB, 50,000 train and 10,000 test images.

  `prepare` takes the binary or python folder, its parent or the .tar.gz, or downloads
  the official archive when no source is given.
  """
  source_hint = "--source DIR_OR_ARCHIVE"

  def __init__(self, name: str):
    super().__init__(DatasetInfo(name, num_classes=NUM_CLASSES["label"][name], image_shape=IMAGE_SHAPE,
                                 splits=dict(SPLIT_SIZES), train_split="train", eval_split="test"))

  @property
  def version(self) -> str:
    return str(BUILDERS[self.name].VERSION)

  def builder(self, source: Optional[pathlib.Path], data_dir: pathlib.Path, downloads: pathlib.Path,
              allow_partial: bool = False):
    archive_or_folder = download_official(self.name, downloads) if source is None else source
    folder = find_source(self.name, archive_or_folder, downloads / "extracted")
    return BUILDERS[self.name](files=read_files(self.name, folder, allow_partial), data_dir=str(data_dir),
                               file_format="array_record")
