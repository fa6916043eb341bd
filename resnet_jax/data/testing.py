"""Tiny datasets in the official file formats, for tests that prepare and read real-format data.

`write_cifar10_binary` is the one other tests use: a few records per file in the layout
of `cifar-10-binary.tar.gz`, so `resnet_jax.data.prepare("cifar10", dir, data_dir)` runs in
seconds. The other writers cover the remaining official formats (python pickles, CIFAR-100,
archives, an ImageNet folder tree).
"""
from __future__ import annotations

import io
import pathlib
import pickle
import tarfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from resnet_jax.data import cifar
from resnet_jax.data.prepare import prepare

CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                       "ship", "truck")


def _random_split(rng: np.random.Generator, n: int, num_classes: Dict[str, int]
                  ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = {k: rng.integers(0, c, size=n).astype(np.int64) for k, c in num_classes.items()}
  return images, labels


def _binary_records(images: np.ndarray, labels: Sequence[np.ndarray]) -> bytes:
  pixels = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  heads = np.stack(labels, axis=1).astype(np.uint8)
  return np.concatenate([heads, pixels], axis=1).tobytes()


def write_cifar10_binary(directory: str | pathlib.Path, num_train_per_batch: int = 20,
                         num_test: int = 30, seed: int = 0) -> pathlib.Path:
  """Writes data_batch_1..5.bin, test_batch.bin and batches.meta.txt (official binary layout).

  Images and labels are uniform random from `seed`; returns the folder (`directory`).
  """
  folder = pathlib.Path(directory)
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(1, 6):
    images, labels = _random_split(rng, num_train_per_batch, {"label": 10})
    (folder / f"data_batch_{i}.bin").write_bytes(_binary_records(images, [labels["label"]]))
  images, labels = _random_split(rng, num_test, {"label": 10})
  (folder / "test_batch.bin").write_bytes(_binary_records(images, [labels["label"]]))
  (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_LABEL_NAMES) + "\n\n")
  return folder


def prepare_cifar10(directory: str | pathlib.Path, num_train_per_batch: int = 20, num_test: int = 30,
                    seed: int = 0) -> pathlib.Path:
  """`write_cifar10_binary` into `directory/src`, prepared as TFDS in `directory/tfds` (returned)."""
  directory = pathlib.Path(directory)
  source = write_cifar10_binary(directory / "src", num_train_per_batch, num_test, seed)
  prepare("cifar10", source=source, data_dir=directory / "tfds", allow_partial=True)
  return directory / "tfds"


def write_cifar(directory: str | pathlib.Path, name: str = "cifar10", binary: bool = True,
                num_train: int = 50, num_test: int = 20, seed: int = 0) -> pathlib.Path:
  """Writes CIFAR-10/100 in an official layout (`binary` or python pickles) under its official folder.

  Returns the folder (e.g. `directory/cifar-100-python`).
  """
  layout = cifar.LAYOUTS[name][0 if binary else 1]
  folder = pathlib.Path(directory) / layout.folder
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  keys = cifar.LABEL_KEYS[name]
  classes = {k: cifar.NUM_CLASSES[k][name] for k in keys}
  names = {k: [f"{k}_{i}" for i in range(c)] for k, c in classes.items()}
  if name == "cifar10":
    names = {"label": list(CIFAR10_LABEL_NAMES)}
  for files, total in ((layout.train_files, num_train), (layout.test_files, num_test)):
    sizes = [total // len(files) + (i < total % len(files)) for i in range(len(files))]
    for file, n in zip(files, sizes):
      images, labels = _random_split(rng, n, classes)
      if binary:
        (folder / file).write_bytes(_binary_records(images, [labels[k] for k in keys]))
      else:
        batch = {b"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        if name == "cifar10":
          batch[b"labels"] = labels["label"].tolist()
        else:
          batch[b"fine_labels"] = labels["label"].tolist()
          batch[b"coarse_labels"] = labels["coarse_label"].tolist()
        (folder / file).write_bytes(pickle.dumps(batch))
  if binary:
    (folder / layout.meta_file).write_text("\n".join(names["label"]) + "\n")
    if name == "cifar100":
      (folder / "coarse_label_names.txt").write_text("\n".join(names["coarse_label"]) + "\n")
  else:
    meta = ({b"label_names": [n.encode() for n in names["label"]]} if name == "cifar10" else
            {b"fine_label_names": [n.encode() for n in names["label"]],
             b"coarse_label_names": [n.encode() for n in names["coarse_label"]]})
    (folder / layout.meta_file).write_bytes(pickle.dumps(meta))
  return folder


def make_archive(folder: str | pathlib.Path, archive: str | pathlib.Path) -> pathlib.Path:
  """Packs `folder` into a .tar.gz as the official archives do (the folder at the top)."""
  folder, archive = pathlib.Path(folder), pathlib.Path(archive)
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  return archive


def synthetic_jpeg(rng: np.random.Generator, height: int, width: int, quality: int = 90) -> bytes:
  """A smooth random RGB image (compresses like a photo, unlike noise) encoded as JPEG."""
  small = rng.integers(0, 256, size=(max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
  image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
  noise = rng.integers(-12, 13, size=(height, width, 3))
  pixels = np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def imagenet_image_size(rng: np.random.Generator) -> Tuple[int, int]:
  """(height, width) drawn like ImageNet train images: mostly 500 px on the long side, 4:3-ish."""
  long_side = int(np.clip(rng.normal(480, 60), 200, 800))
  ratio = float(rng.choice([0.75, 0.667, 1.0, 0.8, 0.5625], p=[0.45, 0.2, 0.15, 0.1, 0.1]))
  short_side = max(int(long_side * ratio), 100)
  return (short_side, long_side) if rng.random() < 0.8 else (long_side, short_side)


def write_imagenet_folder(directory: str | pathlib.Path, wnids: Sequence[str], per_class: int = 2,
                          splits: Sequence[str] = ("train", "val"), seed: int = 0,
                          size: Optional[Tuple[int, int]] = (64, 80)) -> pathlib.Path:
  """Writes `split/<wnid>/<wnid>_<i>.JPEG` trees (`size=None`: ImageNet-like sizes)."""
  root = pathlib.Path(directory)
  rng = np.random.default_rng(seed)
  for split in splits:
    for wnid in wnids:
      folder = root / split / wnid
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        h, w = size if size is not None else imagenet_image_size(rng)
        (folder / f"{wnid}_{split}_{i}.JPEG").write_bytes(synthetic_jpeg(rng, h, w))
  return root
