"""ImageNet (ILSVRC 2012): TF-free preparation as TFDS's `imagenet2012`, and host-side JPEG decoding.

Preparation reads either the manual download (`ILSVRC2012_img_train.tar`,
`ILSVRC2012_img_val.tar`, as the official TFDS builder does) or a folder tree
(`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`), and writes TFDS's own `imagenet2012`
(version 5.1.0, features `image` JPEG, `label`, `file_name`, same keys). The official
builder re-encodes the few CMYK and PNG files with TensorFlow; here Pillow does it.

Decoding (He et al. 2015 §3.4): train images have the shorter side resized to a random
size in [256, 480] and a random 224 crop and flip ("scale"), or the Inception
random-resized crop ("inception"); eval images have the shorter side resized to 256 and a
center 224 crop. Each transform draws a crop box and hands it to a `jpeg.JpegDecoder`
(`data.jpeg_decoder`, default "auto": libjpeg-turbo through simplejpeg and OpenCV when
installed, else Pillow), which decodes at 1/2, 1/4 or 1/8 size in the DCT domain whenever
the output still has the pixels the box needs, and resamples the box (`jpeg.py`).

`ImageNetSource` is the dataset the pipeline reads (registered as "imagenet2012"):
JPEG bytes from ArrayRecord, decoded and cropped by Grain threads on the host.
"""
from __future__ import annotations

import functools
import io
import math
import os
import pathlib
import tarfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as tfds_imagenet

from PIL import Image

from resnet_jax import errors
from resnet_jax.data import augment
from resnet_jax.data import jpeg
from resnet_jax.data import preprocessing
from resnet_jax.data.source import DatasetInfo, ExampleSeed, OpenDataset, decode_threads
from resnet_jax.data.tfds_source import TfdsSource

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
VAL_FOLDERS = ("val", "validation")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLIT_SIZES = {"train": 1_281_167, "validation": 50_000}
TRAIN_AUGMENTS = ("scale", "inception")


def wnids() -> List[str]:
  """The 1,000 ILSVRC 2012 class ids (e.g. "n01440764") in TFDS's label order."""
  path = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
  return path.read_text().split()


def _validation_labels(names: List[str]) -> Dict[str, str]:
  """TFDS's labels of the 50,000 validation images, in the sorted order of their file names."""
  path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
  labels = path.read_text().strip().splitlines()
  if len(names) != len(labels):
    raise errors.InputError(f"{VAL_TAR} holds {len(names)} images, the official one {len(labels)}; "
                     "download it again")
  return dict(zip(sorted(names), labels))


def as_rgb_jpeg(data: bytes, name: str) -> bytes:
  """JPEG bytes as stored by TFDS: CMYK JPEGs and PNGs (a few in ImageNet) re-encoded as RGB JPEG."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format == "JPEG" and image.mode in ("RGB", "L"):
        return data
      buf = io.BytesIO()
      image.convert("RGB").save(buf, format="JPEG", quality=100)
      return buf.getvalue()
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise errors.InputError(f"corrupt image {name} ({e}); replace it or remove it from the source") from e


def _tree_split(root: pathlib.Path, wnids: set) -> Iterator[Tuple[str, dict]]:
  classes = sorted(p for p in root.iterdir() if p.is_dir())
  unknown = [p.name for p in classes if p.name not in wnids]
  if unknown:
    raise errors.InputError(f"{root} has class folder {unknown[0]!r}, not an ILSVRC 2012 wnid (e.g. n01440764)")
  for folder in classes:
    for path in sorted(folder.iterdir()):
      if path.suffix.lower() in IMAGE_SUFFIXES:
        yield path.name, {"file_name": path.name, "label": folder.name,
                          "image": as_rgb_jpeg(path.read_bytes(), str(path))}


def _train_tar(path: pathlib.Path) -> Iterator[Tuple[str, dict]]:
  with tarfile.open(path, "r:") as outer:
    for member in outer:
      if not member.name.endswith(".tar"):
        continue
      wnid = os.path.basename(member.name)[:-4]
      inner_bytes = outer.extractfile(member).read()
      with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:") as inner:
        for image in inner:
          if image.isfile():
            name = os.path.basename(image.name)
            yield name, {"file_name": name, "label": wnid,
                         "image": as_rgb_jpeg(inner.extractfile(image).read(), f"{path}:{image.name}")}


def _val_tar(path: pathlib.Path) -> Iterator[Tuple[str, dict]]:
  with tarfile.open(path, "r:") as tar:
    names = [os.path.basename(m.name) for m in tar.getmembers() if m.isfile()]
  labels = _validation_labels(names)
  with tarfile.open(path, "r:") as tar:
    for member in tar:
      if member.isfile():
        name = os.path.basename(member.name)
        yield name, {"file_name": name, "label": labels[name],
                     "image": as_rgb_jpeg(tar.extractfile(member).read(), f"{path}:{member.name}")}


def find_splits(source: pathlib.Path) -> Dict[str, Tuple[str, pathlib.Path]]:
  """{"train"|"validation": ("tar"|"tree", path)} found in `source`."""
  if not source.is_dir():
    raise errors.MissingError(f"imagenet2012 source {source} is not a folder; pass a folder with "
                            f"{TRAIN_TAR} and {VAL_TAR}, or with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
  splits = {}
  if (source / TRAIN_TAR).is_file():
    splits["train"] = ("tar", source / TRAIN_TAR)
  elif (source / "train").is_dir():
    splits["train"] = ("tree", source / "train")
  if (source / VAL_TAR).is_file():
    splits["validation"] = ("tar", source / VAL_TAR)
  else:
    for folder in VAL_FOLDERS:
      if (source / folder).is_dir():
        splits["validation"] = ("tree", source / folder)
        break
  if not splits:
    raise errors.MissingError(f"no ImageNet in {source}: expected {TRAIN_TAR} and {VAL_TAR} "
                            "(manual download), or train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
  return splits


class ImageNetFromFiles(tfds_imagenet.Builder, skip_registration=True):
  """TFDS's `imagenet2012`, generated without TensorFlow from the tars or a folder tree."""
  name = "imagenet2012"

  def __init__(self, *, source: pathlib.Path, **kwargs):
    self._splits = find_splits(source)
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):  # pylint: disable=unused-argument
    known = set(wnids())
    return {split: self._generate_examples(kind, path, known)
            for split, (kind, path) in self._splits.items()}

  def _generate_examples(self, kind: str, path: pathlib.Path, wnids: set):  # pylint: disable=arguments-renamed
    if kind == "tree":
      yield from _tree_split(path, wnids)
    elif path.name == TRAIN_TAR:
      yield from _train_tar(path)
    else:
      yield from _val_tar(path)


# ----------------------------------------------------------------------------- decoding


def decode_scale_augment(data: bytes, rng: np.random.Generator, size: int,
                         scale_range: Tuple[int, int],
                         decoder: Optional[jpeg.JpegDecoder] = None) -> np.ndarray:
  """He et al. 2015 §3.4: shorter side resized to S ~ U[256, 480], random size² crop, flip."""
  decoder = decoder or jpeg.create()
  w, h = decoder.image_size(data)
  s = rng.integers(scale_range[0], scale_range[1] + 1)
  crop = size * min(w, h) / s              # the crop's side in original pixels
  x0 = rng.uniform(0, max(w - crop, 0))
  y0 = rng.uniform(0, max(h - crop, 0))
  box = (x0, y0, x0 + min(crop, w), y0 + min(crop, h))
  return decoder.crop_resize(data, box, size, flip=rng.random() < 0.5)


def decode_inception_augment(data: bytes, rng: np.random.Generator, size: int,
                             area_range: Tuple[float, float],
                             aspect_ratio_range: Tuple[float, float],
                             decoder: Optional[jpeg.JpegDecoder] = None) -> np.ndarray:
  """Szegedy et al. 2015 (as in Xie et al. 2017): random area and aspect crop, resized; flip."""
  decoder = decoder or jpeg.create()
  w, h = decoder.image_size(data)
  box = None
  for _ in range(10):
    area = w * h * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])))
    cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
    if cw <= w and ch <= h:
      x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
      box = (x0, y0, x0 + cw, y0 + ch)
      break
  if box is None:  # torchvision's fallback: the whole center, aspect clipped to the range
    ratio = min(max(w / h, aspect_ratio_range[0]), aspect_ratio_range[1])
    cw, ch = (w, w / ratio) if w / h < ratio else (h * ratio, h)
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
  return decoder.crop_resize(data, box, size, flip=rng.random() < 0.5)


def decode_center(data: bytes, size: int, resize: int,
                  decoder: Optional[jpeg.JpegDecoder] = None) -> np.ndarray:
  """Shorter side resized to `resize`, center size² crop (the single-crop evaluation)."""
  decoder = decoder or jpeg.create()
  w, h = decoder.image_size(data)
  crop = size * min(w, h) / resize
  x0, y0 = (w - crop) / 2, (h - crop) / 2
  return decoder.crop_resize(data, (x0, y0, x0 + crop, y0 + crop), size)


# ----------------------------------------------------------------------------- the dataset


class ImageNetSplits(OpenDataset):
  """Encoded train/eval records of one config, decoded per example on Grain threads."""

  def __init__(self, train, evaluation, config: ml_collections.ConfigDict):
    self._train, self._eval = train, evaluation
    self.num_train_examples, self.num_eval_examples = len(train), len(evaluation)
    size = int(config.image_size)
    self.image_shape = (size, size, 3)
    self.read_threads = decode_threads(config)
    self.decoder = jpeg.create(config.jpeg_decoder)
    self._augment, self._train_augment = bool(config.augment), config.train_augment
    self._scale_range, self._area_range = tuple(config.scale_range), tuple(config.area_range)
    self._aspect_ratio_range = tuple(config.aspect_ratio_range)
    self._resize = int(config.eval_resize)
    self._eval_crop = int(config.get("eval_image_size", 0)) or size
    self._eval_size = self._resize if config.ten_crop else self._eval_crop  # 10-crop: crops on device
    self._preprocess = functools.partial(
        augment.imagenet_preprocess, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD,
        lighting=bool(config.augment) and bool(config.pca_lighting),
        jitter=float(config.color_jitter) if config.augment else 0.0)

  @property
  def eval_image_shape(self) -> Tuple[int, int, int]:
    return (self._eval_size, self._eval_size, 3)

  def load_train(self, record: int, example_seed: ExampleSeed) -> Tuple[np.ndarray, Any]:
    example = self._train[record]
    rng = np.random.default_rng(example_seed)
    size = self.image_shape[0]
    if not self._augment:
      image = decode_center(example["image"], size, self._resize, self.decoder)
    elif self._train_augment == "scale":
      image = decode_scale_augment(example["image"], rng, size, self._scale_range, self.decoder)
    else:
      image = decode_inception_augment(example["image"], rng, size, self._area_range,
                                       self._aspect_ratio_range, self.decoder)
    return image, np.int32(example["label"])

  def load_eval(self, record: int) -> Tuple[np.ndarray, Any]:
    example = self._eval[record]
    image = decode_center(example["image"], self._eval_size, self._resize, self.decoder)
    return image, np.int32(example["label"])

  def preprocess(self, images: jax.Array, rng: Optional[jax.Array], train: bool) -> jax.Array:
    return self._preprocess(images, rng, train)

  def eval_preprocessing(self) -> preprocessing.Preprocessing:
    """Of decoded images of any size: shorter side `eval_resize`, center crop, ImageNet mean/std
    (the host pipeline's eval crop, on the device)."""
    return preprocessing.Preprocessing.imagenet(self._eval_crop, self._resize)


class ImageNetSource(TfdsSource):
  """ILSVRC 2012 (Russakovsky et al. 2015): 1,000 classes, 1.28M train and 50k validation JPEGs."""
  source_hint = "--source IMAGENET_DIR"

  def __init__(self):
    self.info = DatasetInfo("imagenet2012", num_classes=1000, image_shape=(224, 224, 3),
                            splits=dict(SPLIT_SIZES), train_split="train", eval_split="validation")

  @property
  def version(self) -> str:
    return str(ImageNetFromFiles.VERSION)

  def config_fields(self) -> Dict[str, Any]:
    """He et al. 2015 §3.4, and the options of its successors.

    normalization: "per_channel" (ImageNet mean/std per RGB channel).
    image_size: side of the (square) network input.
    train_augment: "scale" (shorter side in `scale_range`, random crop) or "inception"
      (Szegedy et al. 2015 random-resized crop, `area_range`, `aspect_ratio_range`).
    pca_lighting: AlexNet PCA colour augmentation (Krizhevsky et al. 2012), std 0.1.
    color_jitter: strength of fb.resnet.torch's brightness/contrast/saturation jitter
      (0: off; 0.4 in the ResNeXt recipe, Xie et al. 2017).
    eval_resize: shorter side before the center crop at evaluation.
    eval_image_size: side of that crop; 0: `image_size` ("ResNet strikes back" A3 trains at 160
      and tests at 224: the network pools globally).
    ten_crop: the eval iterator yields `eval_resize`² center squares for the 10-crop
      evaluator (`augment.ten_crop`) instead of `image_size` crops.
    jpeg_decoder: "auto" (the fastest installed), "simplejpeg", "opencv" or "pillow" (the
      reference; the others match its crop boxes and differ by < 1 grey level on average,
      `jpeg.py`).
    """
    return {**super().config_fields(), "normalization": "per_channel", "image_size": 224,
            "train_augment": "scale", "scale_range": (256, 480), "area_range": (0.08, 1.0),
            "aspect_ratio_range": (3 / 4, 4 / 3), "pca_lighting": True, "color_jitter": 0.0,
            "eval_resize": 256, "eval_image_size": 0,
            "ten_crop": False, "jpeg_decoder": "auto"}

  def builder(self, source: Optional[pathlib.Path], data_dir: pathlib.Path, downloads: pathlib.Path,
              allow_partial: bool = False):
    """ImageNet is prepared from what `source` holds (a class-folder subset is a valid source):
    `allow_partial` changes nothing."""
    del downloads, allow_partial
    if source is None:
      raise errors.InputError("imagenet2012 has no public download: get ILSVRC2012_img_train.tar and "
                       "ILSVRC2012_img_val.tar from https://image-net.org and pass --source DIR")
    return ImageNetFromFiles(source=source, data_dir=str(data_dir), file_format="array_record")

  def open(self, config: ml_collections.ConfigDict, data_dir: pathlib.Path) -> ImageNetSplits:
    if config.normalization != "per_channel":
      raise errors.InputError(f"data.normalization={config.normalization!r}; imagenet2012 supports "
                       "'per_channel' (ImageNet statistics)")
    if config.train_augment not in TRAIN_AUGMENTS:
      raise errors.InputError(f"train_augment={config.train_augment!r}; valid: {', '.join(TRAIN_AUGMENTS)}")
    train = self.open_split(config.train_split, data_dir, decode_images=False)
    evaluation = self.open_split(config.eval_split, data_dir, decode_images=False)
    return ImageNetSplits(train, evaluation, config)
