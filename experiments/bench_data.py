"""Input pipeline throughput (a benchmark, not a test): CIFAR batches and ImageNet JPEG decoding.

  python experiments/bench_data.py --cifar-dir TFDS_DIR    # a prepared cifar10 (`resnet-jax prepare`)
  python experiments/bench_data.py --imagenet-images 400   # synthetic JPEGs, ImageNet-like sizes

CIFAR: global batches of 128 as `jax.Array`s from the host pipeline and gathered on the devices
(`data.placement`; crop/flip run on device),
plus the jitted on-device augmentation. ImageNet: decode + augment per host core for the
three host transforms, on synthetic JPEGs (shorter side ~360, longer ~480, quality 90,
like ImageNet's train set), then the threaded pipeline end to end. Only the public API of
`resnet_jax.data` is used.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import jax
import numpy as np
from PIL import Image

import resnet_jax.data as rjd
from resnet_jax.data import imagenet
from resnet_jax.data import testing as data_testing


def bench_cifar(data_dir: str, steps: int) -> None:
  c = rjd.default_config("cifar10")
  c.data_dir = data_dir
  start = time.perf_counter()
  pipe = rjd.create_pipeline(c, 128, 500, seed=0)  # mesh None: every device
  print(f"cifar10: pipeline created ({pipe.num_train_examples:,} images decoded into memory) in "
        f"{time.perf_counter() - start:.1f} s")
  for placement in ("host", "device"):
    it = rjd.TrainIterator(pipe) if placement == "host" else rjd.DeviceResidentTrainIterator(
        pipe, *pipe.dataset.train_arrays())
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


def bench_imagenet(num_images: int, threads: int) -> None:
  rng = np.random.default_rng(0)
  jpegs = [data_testing.synthetic_jpeg(rng, *data_testing.imagenet_image_size(rng)) for _ in range(num_images)]
  print(f"synthetic JPEGs: {num_images}, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB")
  c = rjd.default_config("imagenet2012")
  size, resize = c.image_size, c.eval_resize
  transforms = {
      "full decode only (no draft)": lambda j, r: np.asarray(Image.open(io.BytesIO(j)).convert("RGB")),
      f"train scale aug {list(c.scale_range)} -> {size}": lambda j, r: imagenet.decode_scale_augment(
          j, r, size, c.scale_range),
      f"train inception crop -> {size}": lambda j, r: imagenet.decode_inception_augment(
          j, r, size, c.area_range, c.aspect_ratio_range),
      f"eval resize {resize}, center {size}": lambda j, r: imagenet.decode_center(j, size, resize),
  }
  for name, fn in transforms.items():
    r = np.random.default_rng(1)
    start = time.perf_counter()
    for j in jpegs:
      fn(j, r)
    print(f"imagenet {name}: {num_images / (time.perf_counter() - start):,.0f} img/s per core")
  # End to end through the Grain pipeline, threads decoding, on a prepared synthetic folder tree.
  with tempfile.TemporaryDirectory() as tmp:
    wnids = imagenet.wnids()[:8]
    root = os.path.join(tmp, "src")
    for i, wnid in enumerate(wnids):
      for split in ("train", "val"):
        folder = os.path.join(root, split, wnid)
        os.makedirs(folder)
        for k in range(i, num_images, len(wnids)):
          with open(os.path.join(folder, f"{wnid}_{k}.JPEG"), "wb") as f:
            f.write(jpegs[k])
    rjd.prepare("imagenet2012", root, os.path.join(tmp, "tfds"))
    c.data_dir, c.num_threads = os.path.join(tmp, "tfds"), threads
    pipe = rjd.create_pipeline(c, 32, 32)
    it = pipe.train_iterator()
    jax.block_until_ready(next(it))
    steps = max(num_images // 32, 4)
    start = time.perf_counter()
    for _ in range(steps):
      batch = next(it)
    jax.block_until_ready(batch)
    print(f"imagenet train pipeline ({threads} threads, {os.cpu_count()} cores): "
          f"{steps * 32 / (time.perf_counter() - start):,.0f} img/s")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cifar-dir", default=None, help="TFDS data dir with cifar10 prepared")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--imagenet-images", type=int, default=300)
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  args = parser.parse_args()
  if args.cifar_dir:
    bench_cifar(args.cifar_dir, args.steps)
  if args.imagenet_images:
    bench_imagenet(args.imagenet_images, args.threads)


if __name__ == "__main__":
  main()
