"""`prepare`: official files -> a standard TFDS ArrayRecord dataset directory, without TensorFlow."""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import urllib.error
import urllib.request
from typing import Optional

from resnet_jax.data import cifar
from resnet_jax.data.config import DATASETS

DOWNLOAD_TIMEOUT_S = 30


def resolve_data_dir(data_dir: Optional[str | os.PathLike]) -> pathlib.Path:
  """TFDS's convention: the argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  path = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return pathlib.Path(path).expanduser().absolute()


def prepare_command(name: str, data_dir: pathlib.Path) -> str:
  source = "--source DIR_OR_ARCHIVE" if name != "imagenet2012" else "--source IMAGENET_DIR"
  return f"resnet-jax prepare {name} {source} --data-dir {data_dir}"


def dataset_dir(name: str, data_dir: pathlib.Path) -> pathlib.Path:
  """Where TFDS keeps `name` at the version resnet_jax reads: `data_dir/name/version`."""
  if name in cifar.BUILDERS:
    version = cifar.BUILDERS[name].VERSION
  else:
    from resnet_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    version = imagenet.ImageNetFromFiles.VERSION
  return data_dir / name / str(version)


def check_prepared(name: str, data_dir: pathlib.Path) -> Optional[pathlib.Path]:
  """The prepared dataset's directory, None when absent; raises when it is unusable.

  TFDS writes into `<version>.incomplete*` and renames at the end, so a directory
  with `dataset_info.json` was completely written; the shard files are checked too.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = dataset_dir(name, data_dir)
  if not (path / "dataset_info.json").is_file():
    return None
  builder = tfds.builder_from_directory(str(path))
  formats = {f.value for f in builder.info.available_file_formats()}
  if "array_record" not in formats:
    raise ValueError(f"{path} holds {name} as {', '.join(sorted(formats)) or 'unknown format'}; "
                     "resnet_jax reads ArrayRecord (tfds.data_source): delete it or pick another "
                     f"data dir, then run `{prepare_command(name, data_dir)}`")
  for split, info in builder.info.splits.items():
    missing = [str(p) for p in info.filepaths if not pathlib.Path(p).is_file()]
    if missing:
      raise FileNotFoundError(f"{name} at {path} is incomplete: split {split!r} misses {missing[0]}; "
                              f"delete {path} and run `{prepare_command(name, data_dir)}`")
  return path


def download_official(name: str, download_dir: pathlib.Path) -> pathlib.Path:
  """Downloads the official archive (checked against TFDS's SHA-256); fails fast offline."""
  url, sha256 = cifar.OFFICIAL_URLS[name]
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
    raise FileNotFoundError(f"cannot download {url} ({e}); download it where there is network and "
                            f"run `resnet-jax prepare {name} --source {target.name}`") from e
  if digest.hexdigest() != sha256:
    partial.unlink(missing_ok=True)
    raise ValueError(f"{url} downloaded with SHA-256 {digest.hexdigest()}, expected {sha256}; retry")
  partial.rename(target)
  return target


def prepare(name: str, source: Optional[str | os.PathLike] = None,
            data_dir: Optional[str | os.PathLike] = None) -> pathlib.Path:
  """Prepares `name` ("cifar10" | "cifar100" | "imagenet2012") as TFDS ArrayRecord; idempotent.

  `source`: the official files a user has (CIFAR: the binary or python folder, its
  parent, or the .tar.gz; ImageNet: a folder with ILSVRC2012_img_{train,val}.tar or a
  `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG` tree). None downloads the official CIFAR
  archive (ImageNet has no public download). Returns the dataset directory
  `data_dir/name/version`; a prepared dataset is returned as it is.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
  root = resolve_data_dir(data_dir)
  done = check_prepared(name, root)
  if done is not None:
    logging.info("%s is already prepared in %s", name, done)
    return done
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  downloads = root / "downloads"
  if name == "imagenet2012":
    from resnet_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    if source is None:
      raise ValueError("imagenet2012 has no public download: get ILSVRC2012_img_train.tar and "
                       "ILSVRC2012_img_val.tar from https://image-net.org and pass --source DIR")
    builder = imagenet.ImageNetFromFiles(source=pathlib.Path(source).expanduser().absolute(),
                                         data_dir=str(root), file_format="array_record")
  else:
    archive_or_folder = (download_official(name, downloads) if source is None
                         else pathlib.Path(source).expanduser().absolute())
    folder = cifar.find_source(name, archive_or_folder, downloads / "extracted")
    builder = cifar.BUILDERS[name](files=cifar.read_files(name, folder), data_dir=str(root),
                                   file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False), download_dir=str(downloads))
  done = check_prepared(name, root)
  if done is None:
    raise FileNotFoundError(f"preparing {name} wrote no {dataset_dir(name, root)}/dataset_info.json")
  shutil.rmtree(downloads / "extracted", ignore_errors=True)
  return done
