"""ImageNet JPEG decoders: the fast paths keep Pillow's crop boxes and pixels (within a bound), fall back to Pillow."""
import io
import logging

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import imagenet, jpeg, source
from resnet_jax.data import testing as data_testing

FAST = [name for name in ("simplejpeg", "opencv") if jpeg.available(name)]
SIZE = 64  # output side: small keeps the test fast; the boxes still reduce and enlarge


@pytest.fixture(scope="module")
def jpegs():
  rng = np.random.default_rng(0)
  shapes = [(96, 128), (128, 96), (75, 100), (61, 97), (300, 400), (520, 390)]
  return [data_testing.synthetic_jpeg(rng, h, w) for h, w in shapes]


def _transforms(decoder):
  return {
      "scale": lambda j, r: imagenet.decode_scale_augment(j, r, SIZE, (70, 130), decoder),
      "inception": lambda j, r: imagenet.decode_inception_augment(j, r, SIZE, (0.08, 1.0), (3 / 4, 4 / 3), decoder),
      "eval": lambda j, r: imagenet.decode_center(j, SIZE, 73, decoder),
  }


@pytest.mark.parametrize("name", FAST)
def test_fast_decoder_matches_pillow_within_bound(name, jpegs):
  # Same crop box, flip and DCT factor; the resampling differs by the documented < 1 grey level
  # on average (a box one pixel off, or a wrong flip, gives tens of levels on these images).
  fast, reference = jpeg.create(name), jpeg.PillowDecoder()
  for kind, fn in _transforms(fast).items():
    ref_fn = _transforms(reference)[kind]
    for seed in range(4):
      for data in jpegs:
        out = fn(data, np.random.default_rng(seed))
        ref = ref_fn(data, np.random.default_rng(seed))
        assert out.shape == ref.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
        diff = np.abs(out.astype(np.int16) - ref)
        assert diff.mean() < 1.0 and diff.max() <= 10, (kind, seed, diff.mean(), diff.max())


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_dct_scaled_decode_is_pillows_draft_bit_for_bit(name, factor, jpegs):
  data = jpegs[-1]
  with Image.open(io.BytesIO(data)) as image:
    w, h = image.size
    image.draft("RGB", (w // factor, h // factor))
    ref = np.asarray(image.convert("RGB"))
  out = jpeg.create(name).decode(data, w, h, factor)
  out = out[..., :3] if name == "simplejpeg" else out[..., ::-1]  # RGBX / BGR
  np.testing.assert_array_equal(out, ref)


def test_reduction_is_pillows_draft_choice():
  rng = np.random.default_rng(0)
  for _ in range(300):
    w, h = (int(v) for v in rng.integers(40, 2000, 2))
    side = rng.uniform(4, min(w, h))
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    box = (x0, y0, x0 + side, y0 + side)
    image = Image.new("RGB", (w, h))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    with Image.open(buf) as jpg:
      request = jpeg.draft_request(w, h, box, 64)
      if request is not None:
        jpg.draft("RGB", request)
      assert jpg.size == (-(-w // jpeg.reduction(w, h, box, 64)), -(-h // jpeg.reduction(w, h, box, 64)))


def test_jpeg_size_reads_the_frame_header():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (37, 53, 3), np.uint8)
  for kwargs in ({}, {"progressive": True}, {"exif": Image.Exif()}, {"quality": 50, "subsampling": 0}):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **kwargs)
    assert jpeg.jpeg_size(buf.getvalue()) == (53, 37)
  png = io.BytesIO()
  Image.fromarray(pixels).save(png, format="PNG")
  assert jpeg.jpeg_size(png.getvalue()) is None
  assert jpeg.jpeg_size(b"\xff\xd8\xff") is None


@pytest.mark.parametrize("name", FAST)
def test_exif_orientation_grayscale_and_cmyk_as_pillow(name):
  rng = np.random.default_rng(2)
  rgb = data_testing.synthetic_jpeg(rng, 48, 80)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise to display": Pillow (and the TFDS data) ignore it
  rotated, gray, cmyk = io.BytesIO(), io.BytesIO(), io.BytesIO()
  base = Image.open(io.BytesIO(rgb))
  base.save(rotated, format="JPEG", quality=95, exif=exif)
  base.convert("L").save(gray, format="JPEG", quality=95)
  base.convert("CMYK").save(cmyk, format="JPEG", quality=95)
  fast, reference = jpeg.create(name), jpeg.PillowDecoder()
  box = (3.5, 2.25, 70.0, 46.5)
  for data in (rotated.getvalue(), gray.getvalue(), cmyk.getvalue()):
    assert fast.image_size(data) == reference.image_size(data) == (80, 48)
    out, ref = fast.crop_resize(data, box, 32, flip=True), reference.crop_resize(data, box, 32, flip=True)
    assert out.shape == ref.shape == (32, 32, 3)
    assert np.abs(out.astype(np.int16) - ref).mean() < 1.0
  # CMYK (re-encoded at preparation, but possible in other data) goes through Pillow itself.
  np.testing.assert_array_equal(fast.crop_resize(cmyk.getvalue(), box, 32), reference.crop_resize(cmyk.getvalue(), box, 32))


def test_auto_prefers_simplejpeg_then_opencv_then_pillow(monkeypatch):
  monkeypatch.setattr(jpeg, "_MODULES", {"simplejpeg": None, "cv2": None})
  assert isinstance(jpeg.create("auto"), jpeg.PillowDecoder)
  with pytest.raises(ValueError, match="pip install opencv-python-headless"):
    jpeg.create("opencv")
  with pytest.raises(ValueError, match="valid: auto, simplejpeg, opencv, pillow"):
    jpeg.create("turbo")
  if FAST:  # with OpenCV back (and simplejpeg still missing), auto takes OpenCV
    import cv2  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(jpeg, "_MODULES", {"simplejpeg": None, "cv2": cv2})
    assert isinstance(jpeg.create("auto"), jpeg.OpenCVDecoder)


def test_imagenet_transforms_run_on_pillow_when_no_fast_library(monkeypatch, jpegs):
  monkeypatch.setattr(jpeg, "_MODULES", {"simplejpeg": None, "cv2": None})
  out = imagenet.decode_inception_augment(jpegs[0], np.random.default_rng(0), SIZE, (0.08, 1.0), (3 / 4, 4 / 3))
  ref = imagenet.decode_inception_augment(jpegs[0], np.random.default_rng(0), SIZE, (0.08, 1.0), (3 / 4, 4 / 3),
                                          jpeg.PillowDecoder())
  np.testing.assert_array_equal(out, ref)


def test_num_threads_zero_shares_the_cores_among_workers(monkeypatch):
  import ml_collections  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(source, "available_cores", lambda: 96)
  for threads, workers, expected in ((0, 0, 96), (0, 1, 96), (0, 8, 12), (0, 200, 1), (5, 8, 5)):
    config = ml_collections.ConfigDict({"num_threads": threads, "num_workers": workers})
    assert source.decode_threads(config) == expected


def test_tfds_image_decoding_logs_no_opencv_warning(caplog):
  # TFDS decodes CIFAR's PNGs with OpenCV when it is installed, and warns once per process
  # ("OpenCV is not installed...") when it falls back to Pillow.
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.features import image_feature  # pylint: disable=import-outside-toplevel
  png = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
  absl_logging._log_counter_per_token.clear()  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    image = image_feature.Image(shape=(4, 4, 3)).decode_example_np(png.getvalue())
  assert image.shape == (4, 4, 3)
  assert "OpenCV is not installed" not in caplog.text


@pytest.mark.parametrize("name", ["simplejpeg", "opencv"])
def test_fast_decoders_keep_opencv_to_one_thread_per_image(name):
  """The pipeline parallelises over images; OpenCV's own pool on top costs ~1.5x CPU per image."""
  import cv2  # pylint: disable=g-import-not-at-top
  previous = cv2.getNumThreads()
  try:
    cv2.setNumThreads(max(2, previous))
    jpeg.create(name)
    assert cv2.getNumThreads() == 1
  finally:
    cv2.setNumThreads(previous)
