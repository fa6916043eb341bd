"""Input pipeline throughput (a benchmark, not a test): CIFAR batches and ImageNet JPEG decoding.

  python experiments/bench_data.py --cifar-dir TFDS_DIR    # a prepared cifar10 (`resnet-jax prepare`)
  python experiments/bench_data.py --imagenet-images 400   # synthetic JPEGs, ImageNet-like sizes

CIFAR: global batches of 128 as `jax.Array`s from the host pipeline and gathered on the
devices (`data.placement`; crop/flip run on device), plus the jitted on-device augmentation.
ImageNet, on synthetic JPEGs (mostly ~500×375, quality 90, like ImageNet's train set):
images per CPU-second for each host transform (`scale`, `inception`, eval) with each JPEG
decoder installed (`resnet_jax.data.jpeg`: Pillow, OpenCV, simplejpeg; PyTurboJPEG with DCT
scaling and with region decode by a lossless crop, when it and libturbojpeg are installed),
interleaved so that all share the machine's conditions; then the Grain train pipeline end to
end for `num_workers` processes.
"""
from __future__ import annotations

import argparse
import functools
import io
import math
import os
import tempfile
import time
from typing import Callable, Dict, Sequence

import jax
import numpy as np
from PIL import Image

import resnet_jax.data as rjd
from resnet_jax.data import imagenet
from resnet_jax.data import jpeg
from resnet_jax.data import source
from resnet_jax.data import testing as data_testing


def bench_cifar(data_dir: str, steps: int) -> None:
  c = rjd.default_config("cifar10")
  c.data_dir = data_dir
  start = time.perf_counter()
  pipe = rjd.create_pipeline(c, 128, 500, seed=0)  # mesh None: every device
  print(f"cifar10: pipeline created ({pipe.num_train_examples:,} images decoded into memory) in "
        f"{time.perf_counter() - start:.1f} s")
  for placement in ("host", "device"):
    it = rjd.TrainIterator(pipe.train_stream) if placement == "host" else rjd.DeviceResidentTrainIterator(
        pipe.train_stream, *pipe.dataset.train_arrays())
    jax.block_until_ready(next(it))
    start = time.perf_counter()
    for _ in range(steps):
      batch = next(it)
    jax.block_until_ready(batch)
    print(f"cifar10 train batches: {steps * 128 / (time.perf_counter() - start):,.0f} img/s "
          f"({placement} placement)")
  fn = jax.jit(lambda x, k: pipe.preprocess(x, k, True))
  jax.block_until_ready(fn(batch["image"], jax.random.key(0)))
  start = time.perf_counter()
  for i in range(steps):
    out = fn(batch["image"], jax.random.key(i))
  jax.block_until_ready(out)
  print(f"cifar10 on-device crop+flip+normalise: {steps * 128 / (time.perf_counter() - start):,.0f} img/s "
        f"on {jax.devices()[0].platform}")
  start = time.perf_counter()
  n = sum(int(b["mask"].sum()) for b in pipe.eval_iterator())
  print(f"cifar10 eval pass: {n / (time.perf_counter() - start):,.0f} img/s ({n} images)")


# TurboJPEG's subsampling codes (TJSAMP_444, 422, 420, GRAY, 440, 411) -> MCU width, height.
MCU_SIZES = {0: (8, 8), 1: (16, 8), 2: (16, 16), 3: (8, 8), 4: (8, 16), 5: (32, 8)}


class TurboJpegDecoder(jpeg.ArrayDecoder):
  """libjpeg-turbo through PyTurboJPEG (needs the system's libturbojpeg); measured, not shipped."""
  name = "pyturbojpeg"

  def __init__(self):
    import turbojpeg  # pylint: disable=g-import-not-at-top
    self._tj, self._rgbx = turbojpeg.TurboJPEG(), turbojpeg.TJPF_RGBX

  def decode(self, data, width, height, factor):
    return self._tj.decode(data, pixel_format=self._rgbx, scaling_factor=None if factor == 1 else (1, factor))


class TurboJpegRegionDecoder(TurboJpegDecoder):
  """Region decode: a lossless crop to the box's MCU-aligned window (tjTransform), then decode."""
  name = "pyturbojpeg region"

  def crop_resize(self, data, box, size, flip=False):
    width, height, subsampling, _ = self._tj.decode_header(data)
    mcu_w, mcu_h = MCU_SIZES[subsampling]
    margin = math.ceil(max(box[2] - box[0], box[3] - box[1]) / size) + 1  # the prefilter's reach
    left = max(int(box[0]) - margin, 0) // mcu_w * mcu_w
    top = max(int(box[1]) - margin, 0) // mcu_h * mcu_h
    right, bottom = min(math.ceil(box[2]) + margin, width), min(math.ceil(box[3]) + margin, height)
    window = self._tj.crop(data, left, top, right - left, bottom - top)
    shifted = (box[0] - left, box[1] - top, box[2] - left, box[3] - top)
    return super().crop_resize(window, shifted, size, flip)


def _decoders() -> Dict[str, jpeg.JpegDecoder]:
  out = {name: jpeg.create(name) for name in ("pillow", "opencv", "simplejpeg") if jpeg.available(name)}
  try:
    out["pyturbojpeg"], out["pyturbojpeg region"] = TurboJpegDecoder(), TurboJpegRegionDecoder()
  except (ImportError, OSError, RuntimeError) as e:  # no PyTurboJPEG, or no libturbojpeg it accepts
    print(f"(pyturbojpeg not measured: {str(e).splitlines()[0]})")
  return out


def _full_decoders(decoders) -> Dict[str, Callable[[bytes], np.ndarray]]:
  """Decode only, full size, RGB: the floor under every transform."""
  out = {"pillow": lambda j: np.asarray(Image.open(io.BytesIO(j)).convert("RGB"))}
  if "opencv" in decoders:
    import cv2  # pylint: disable=g-import-not-at-top
    out["opencv"] = lambda j: cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR),
                                           cv2.COLOR_BGR2RGB)
  if "simplejpeg" in decoders:
    import simplejpeg  # pylint: disable=g-import-not-at-top
    out["simplejpeg"] = simplejpeg.decode_jpeg
  if "pyturbojpeg" in decoders:
    tj = decoders["pyturbojpeg"]
    out["pyturbojpeg"] = lambda j: tj.decode(j, 0, 0, 1)
  return out


def bench_imagenet_per_core(jpegs, rounds: int) -> Dict[str, Dict[str, float]]:
  """Images per CPU-second of this process for each transform × decoder, interleaved rounds.

  CPU time (not wall time) divides out the other processes sharing the machine; the median
  of `rounds` interleaved passes is reported.
  """
  c = rjd.default_config("imagenet2012")
  size, resize = c.image_size, c.eval_resize
  decoders = _decoders()
  transforms = {
      "scale": lambda d, j, r: imagenet.decode_scale_augment(j, r, size, c.scale_range, d),
      "inception": lambda d, j, r: imagenet.decode_inception_augment(j, r, size, c.area_range,
                                                                     c.aspect_ratio_range, d),
      "eval": lambda d, j, r: imagenet.decode_center(j, size, resize, d),
  }
  jobs = {("full decode", name): (lambda f: lambda j, r: f(j))(f) for name, f in _full_decoders(decoders).items()}
  for t, fn in transforms.items():
    for name, d in decoders.items():
      if name == "pyturbojpeg region" and t != "inception":
        continue  # only the Inception crop leaves much of the image out
      jobs[(t, name)] = functools.partial(fn, d)
  rates: Dict[tuple, list] = {k: [] for k in jobs}
  for _ in range(rounds):
    for key, fn in jobs.items():
      r = np.random.default_rng(1)
      start = time.process_time()
      for j in jpegs:
        fn(j, r)
      rates[key].append(len(jpegs) / max(time.process_time() - start, 1e-9))
  table: Dict[str, Dict[str, float]] = {}
  for (t, name), values in rates.items():
    table.setdefault(t, {})[name] = float(np.median(values))
  names = list(dict.fromkeys(name for row in table.values() for name in row))
  print(f"\nimg/s per core (CPU time, median of {rounds} interleaved rounds, {len(jpegs)} JPEGs):\n")
  print("| transform | " + " | ".join(names) + " |")
  print("|---|" + "---:|" * len(names))
  for t, row in table.items():
    print(f"| {t} | " + " | ".join(f"{row[n]:,.0f}" if n in row else "–" for n in names) + " |")
  return table


def _pipeline_rate(c, steps: int, batch: int) -> float:
  pipe = rjd.create_pipeline(c, batch, batch)
  it = pipe.train_iterator()
  for _ in range(2 * max(int(c.num_workers), 1)):  # a batch from every worker: all have started
    jax.block_until_ready(next(it))
  start = time.perf_counter()
  for _ in range(steps):
    out = next(it)
  jax.block_until_ready(out)
  return steps * batch / (time.perf_counter() - start)


def bench_imagenet_pipeline(jpegs, workers: Sequence[int], decoders: Sequence[str]) -> None:
  """The Grain train pipeline end to end on a prepared synthetic folder tree."""
  c = rjd.default_config("imagenet2012")
  with tempfile.TemporaryDirectory() as tmp:
    wnids = imagenet.wnids()[:8]
    root = os.path.join(tmp, "src")
    for i, wnid in enumerate(wnids):
      for split in ("train", "val"):
        folder = os.path.join(root, split, wnid)
        os.makedirs(folder)
        for k in range(i, len(jpegs), len(wnids)):
          with open(os.path.join(folder, f"{wnid}_{k}.JPEG"), "wb") as f:
            f.write(jpegs[k])
    rjd.prepare("imagenet2012", root, os.path.join(tmp, "tfds"))
    c.data_dir = os.path.join(tmp, "tfds")
    batch = 32
    steps = max(3 * len(jpegs) // batch, 20)  # epochs repeat; long enough for worker start-up to fade
    cores = source.available_cores()
    print(f"\nimagenet train pipeline, {cores} cores, batches of {batch}, threads per process "
          "num_threads=0 (cores / processes):\n")
    print("| decoder | " + " | ".join(f"num_workers={w}" for w in workers) + " |")
    print("|---|" + "---:|" * len(workers))
    for name in decoders:
      c.jpeg_decoder = name
      cells = []
      for w in workers:
        c.num_workers, c.num_threads = w, 0
        cells.append(f"{_pipeline_rate(c, steps, batch):,.0f} img/s ({source.decode_threads(c)} threads)")
      print(f"| {name} | " + " | ".join(cells) + " |")


def bench_imagenet(num_images: int, rounds: int, workers: Sequence[int]) -> None:
  rng = np.random.default_rng(0)
  jpegs = [data_testing.synthetic_jpeg(rng, *data_testing.imagenet_image_size(rng)) for _ in range(num_images)]
  shapes = [Image.open(io.BytesIO(j)).size for j in jpegs]
  print(f"synthetic JPEGs: {num_images}, quality 90, median {int(np.median([s[0] for s in shapes]))}×"
        f"{int(np.median([s[1] for s in shapes]))}, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  default = jpeg.create("auto").name
  if rounds:
    table = bench_imagenet_per_core(jpegs, rounds)
    print(f"\ndefault decoder (jpeg_decoder='auto'): {default}; on a 96-core host, "
          + ", ".join(f"{t} ≈ {96 * row[default]:,.0f} img/s" for t, row in table.items() if default in row)
          + " (96 × the per-core figure)")
  bench_imagenet_pipeline(jpegs, workers, ["pillow", default] if default != "pillow" else ["pillow"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cifar-dir", default=None, help="TFDS data dir with cifar10 prepared")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--imagenet-images", type=int, default=300)
  parser.add_argument("--rounds", type=int, default=5, help="interleaved passes per decoder (0: skip)")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                      help="num_workers values of the pipeline measurement")
  args = parser.parse_args()
  if args.cifar_dir:
    bench_cifar(args.cifar_dir, args.steps)
  if args.imagenet_images:
    bench_imagenet(args.imagenet_images, args.rounds, args.workers)


if __name__ == "__main__":
  main()
