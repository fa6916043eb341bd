"""One JPEG's crop box to a size×size RGB array, with the fastest decoder installed.

The transform is defined by Pillow (the reference path, `PillowDecoder`):
1. DCT-domain downscaling by 1/2, 1/4 or 1/8 (libjpeg's scaled IDCT, Pillow's `draft` rule:
   the largest factor that keeps at least `size` pixels across the box);
2. the box (float coordinates, mapped onto the reduced image) resampled to size×size with
   Pillow's BILINEAR filter: a triangle of half-width max(1, box / size) input pixels, i.e.
   bilinear interpolation when enlarging and an antialiased triangle when reducing (also
   torchvision's `RandomResizedCrop`);
3. an optional horizontal flip.

`SimpleJpegDecoder` (libjpeg-turbo through `simplejpeg`) and `OpenCVDecoder` do step 1 with
the same libjpeg-turbo arithmetic and the same factor, so the decoded pixels are identical
to Pillow's, and steps 2-3 with OpenCV: the same triangle as a separable prefilter when
reducing, then bilinear sampling at Pillow's sample positions (`cv2.warpAffine`, the flip
folded into the map). The crop box is the same; resampled pixels differ from Pillow's by
0.3-0.5 grey levels on average (224² crops of ~500×375 JPEGs; a few levels at most), because
the triangle is applied at whole-pixel offsets before interpolating instead of at each
sample's exact offset (`tests/test_jpeg.py` bounds it). The fast path is ~1.5× Pillow's per
core (`experiments/bench_data.py`; JPEG decoding itself is the floor).

`create("auto")` picks simplejpeg + OpenCV, else OpenCV, else Pillow; a JPEG that a fast
decoder refuses (e.g. CMYK) goes through Pillow.
"""
from __future__ import annotations

import abc
import functools
import importlib
import io
import math
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from resnet_jax import errors

Box = Tuple[float, float, float, float]  # (left, upper, right, lower) in full-resolution pixels
DECODERS = ("auto", "simplejpeg", "opencv", "pillow")
PIP_NAMES = {"simplejpeg": "simplejpeg", "cv2": "opencv-python-headless"}


def _module(name: str):
  """The module, or None when it is not installed (imported once per process)."""
  if name not in _MODULES:
    try:
      _MODULES[name] = importlib.import_module(name)
    except ImportError:
      _MODULES[name] = None
  return _MODULES[name]


_MODULES: Dict[str, object] = {}


def draft_request(width: int, height: int, box: Box, size: int) -> Optional[Tuple[int, int]]:
  """The smallest image size that keeps `size` pixels across `box`; None when that is full size."""
  scale = max(size / max(box[2] - box[0], 1e-6), size / max(box[3] - box[1], 1e-6))
  if scale >= 1:
    return None
  return math.ceil(width * scale), math.ceil(height * scale)


def reduction(width: int, height: int, box: Box, size: int) -> int:
  """The DCT factor (1, 2, 4 or 8) Pillow's `draft` picks for `draft_request`: the largest
  power of two that does not go below the requested size."""
  request = draft_request(width, height, box, size)
  if request is None:
    return 1
  most = min(width // request[0], height // request[1])
  return next(r for r in (8, 4, 2, 1) if most >= r)


class JpegDecoder(abc.ABC):
  """Decodes `box` of a JPEG (or any image Pillow reads) to uint8 [size, size, 3] RGB."""
  name: str

  @abc.abstractmethod
  def image_size(self, data: bytes) -> Tuple[int, int]:
    """(width, height) of the encoded image, from its header."""

  @abc.abstractmethod
  def crop_resize(self, data: bytes, box: Box, size: int, flip: bool = False) -> np.ndarray:
    """`box` resampled to size×size (module docstring), mirrored left-right when `flip`."""

  def __repr__(self) -> str:
    return f"{type(self).__name__}()"


class PillowDecoder(JpegDecoder):
  """The reference: Pillow's `draft` (DCT scaling) and `resize(BILINEAR, box=)`."""
  name = "pillow"

  def image_size(self, data: bytes) -> Tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
      return image.size

  def crop_resize(self, data: bytes, box: Box, size: int, flip: bool = False) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
      full_w, full_h = image.size
      request = draft_request(full_w, full_h, box, size)
      if image.format == "JPEG" and request is not None:
        image.draft("RGB", request)
      image = image.convert("RGB")
      sx, sy = image.size[0] / full_w, image.size[1] / full_h
      out = image.resize((size, size), Image.BILINEAR,
                         box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    if flip:
      out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def _triangle_taps(half_width: float) -> np.ndarray:
  radius = math.ceil(half_width) - 1
  taps = 1.0 - np.abs(np.arange(-radius, radius + 1, dtype=np.float64)) / half_width
  return taps / taps.sum()


def _variance(taps: np.ndarray) -> float:
  offsets = np.arange(len(taps)) - len(taps) // 2
  return float((offsets ** 2 * taps).sum())


@functools.lru_cache(maxsize=4096)
def _prefilter(scale: float) -> np.ndarray:
  """Triangle taps at whole-pixel offsets for a reduction by `scale` (> 1), normalised.

  Pillow's kernel is a triangle of half-width `scale` (variance scale²/6) evaluated at each
  sample's exact offset; here the prefilter is followed by bilinear interpolation, which
  adds 1/6 pixel² on average, so the triangle's half-width is chosen to make the sum
  scale²/6 (this halves the worst differences of the plain half-width-`scale` triangle).
  """
  target, lo, hi = (scale * scale - 1.0) / 6.0, 1.0, scale
  for _ in range(30):  # the variance grows with the half-width: bisect
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if _variance(_triangle_taps(mid)) < target else (lo, mid)
  return _triangle_taps(hi).astype(np.float32)


def resample(image: np.ndarray, box: Box, size: int, flip: bool = False) -> np.ndarray:
  """`box` of `image` (uint8 [H, W, C]) to [size, size, C] with OpenCV, Pillow's BILINEAR geometry.

  Output pixel u samples the input at x = left + (u + 0.5) · box_width / size − 0.5 (pixel
  centres at integer + 0.5, as Pillow); when reducing, a triangle prefilter (`_prefilter`)
  is applied first, on a window around the box only.
  """
  cv2 = _module("cv2")
  x0, y0, x1, y1 = box
  sx, sy = (x1 - x0) / size, (y1 - y0) / size
  if sx > 1 or sy > 1:
    margin = math.ceil(max(sx, sy)) + 1
    left, top = max(int(x0) - margin, 0), max(int(y0) - margin, 0)
    right = min(math.ceil(x1) + margin, image.shape[1])
    bottom = min(math.ceil(y1) + margin, image.shape[0])
    one = np.ones((1,), np.float32)
    image = cv2.sepFilter2D(image[top:bottom, left:right], -1, _prefilter(round(sx, 3)) if sx > 1 else one,
                            _prefilter(round(sy, 3)) if sy > 1 else one, borderType=cv2.BORDER_REPLICATE)
    x0, y0 = x0 - left, y0 - top
  if flip:  # output column u reads the unflipped column size - 1 - u
    row_x = (-sx, 0.0, x0 + (size - 0.5) * sx - 0.5)
  else:
    row_x = (sx, 0.0, x0 + 0.5 * sx - 0.5)
  matrix = np.asarray([row_x, (0.0, sy, y0 + 0.5 * sy - 0.5)], np.float64)
  return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_REPLICATE)


class ArrayDecoder(JpegDecoder):
  """Decodes to an array at Pillow's DCT factor with a libjpeg-turbo binding, resamples with OpenCV."""

  @abc.abstractmethod
  def decode(self, data: bytes, width: int, height: int, factor: int) -> Optional[np.ndarray]:
    """The image at 1/`factor` size (ceil), uint8 [H, W, 3 or 4], RGB(X) order; None if refused."""

  bgr = False  # `decode` gives BGR(X) channel order

  def image_size(self, data: bytes) -> Tuple[int, int]:
    size = jpeg_size(data)
    return size if size is not None else PillowDecoder().image_size(data)

  def crop_resize(self, data: bytes, box: Box, size: int, flip: bool = False) -> np.ndarray:
    header = jpeg_header(data)
    image, full = None, None
    if header is not None and header[2] in (1, 3):  # greyscale or YCbCr; CMYK converts as Pillow does
      full = header[:2]
      factor = reduction(*full, box, size)
      try:
        image = self.decode(data, *full, factor)
      except ValueError:  # what the binding refuses (CMYK, corrupt data): Pillow decides
        image = None
    if image is None:
      return PillowDecoder().crop_resize(data, box, size, flip)
    sx, sy = image.shape[1] / full[0], image.shape[0] / full[1]
    out = resample(image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), size, flip)
    cv2 = _module("cv2")
    if out.shape[-1] == 4:  # cvtColor: a strided numpy slice copies ~10× slower
      return cv2.cvtColor(out, cv2.COLOR_BGRA2RGB if self.bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if self.bgr else out


class SimpleJpegDecoder(ArrayDecoder):
  """libjpeg-turbo via `simplejpeg` (decoded straight to RGBX, which OpenCV resamples fastest)."""
  name = "simplejpeg"

  def decode(self, data: bytes, width: int, height: int, factor: int) -> Optional[np.ndarray]:
    simplejpeg = _module("simplejpeg")
    # The smallest libjpeg-turbo scale whose output is at least ceil(size / factor): 1/factor.
    return simplejpeg.decode_jpeg(data, colorspace="RGBX", min_width=-(-width // factor),
                                  min_height=-(-height // factor))


class OpenCVDecoder(ArrayDecoder):
  """libjpeg-turbo via OpenCV's `imdecode` (EXIF orientation ignored, as Pillow does)."""
  name = "opencv"
  bgr = True

  def decode(self, data: bytes, width: int, height: int, factor: int) -> Optional[np.ndarray]:
    cv2 = _module("cv2")
    mode = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    return cv2.imdecode(np.frombuffer(data, np.uint8), mode | cv2.IMREAD_IGNORE_ORIENTATION)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame (not DHT/JPG/DAC)


def jpeg_header(data: bytes) -> Optional[Tuple[int, int, int]]:
  """(width, height, colour components) from a JPEG's frame header; None when `data` is not a
  readable JPEG."""
  if data[:2] != b"\xff\xd8":
    return None
  i, n = 2, len(data)
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
      i += 2
      continue
    length = int.from_bytes(data[i + 2:i + 4], "big")
    if marker in _SOF_MARKERS:
      if i + 10 > n:
        return None
      height = int.from_bytes(data[i + 5:i + 7], "big")
      width = int.from_bytes(data[i + 7:i + 9], "big")
      return (width, height, data[i + 9]) if width and height else None
    i += 2 + length
  return None


def jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
  """(width, height) of a JPEG; None when `data` is not a readable JPEG."""
  header = jpeg_header(data)
  return None if header is None else header[:2]


_CLASSES = {"simplejpeg": SimpleJpegDecoder, "opencv": OpenCVDecoder, "pillow": PillowDecoder}
_NEEDS = {"simplejpeg": ("simplejpeg", "cv2"), "opencv": ("cv2",), "pillow": ()}


def available(name: str) -> bool:
  """Whether the libraries of decoder `name` are installed."""
  return all(_module(m) is not None for m in _NEEDS[name])


def create(name: str = "auto") -> JpegDecoder:
  """The decoder `name` ("simplejpeg", "opencv", "pillow"), or for "auto" the fastest installed.

  Raises ValueError for an unknown name or one whose library is missing (with its pip name).
  """
  if name == "auto":
    name = next(n for n in ("simplejpeg", "opencv", "pillow") if available(n))
  if name not in _CLASSES:
    raise errors.InputError(f"jpeg_decoder={name!r}; valid: {', '.join(DECODERS)}")
  missing = [PIP_NAMES[m] for m in _NEEDS[name] if _module(m) is None]
  if missing:
    raise errors.InputError(f"jpeg_decoder={name!r} needs {' and '.join(missing)}: pip install "
                     f"{' '.join(missing)} (or jpeg_decoder='auto' to use what is installed)")
  if "cv2" in _NEEDS[name]:
    # The pipeline runs one image per thread/process; OpenCV's own thread pool on top of that
    # spends ~1.5x the CPU per image (measured: 590 -> 930 img/s per core, `scale`, 2 cores).
    _module("cv2").setNumThreads(1)
  return _CLASSES[name]()
