"""Data layer across devices, ImageNet preparation from files, and the real CIFAR-10."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh

import resnet_jax.data as rjd
from resnet_jax.data import testing as data_testing

REPO = pathlib.Path(__file__).resolve().parents[1]

MULTIDEVICE = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh
    import resnet_jax.data as rjd
    assert jax.device_count() == 8
    c = rjd.default_config("cifar10")
    c.data_dir = sys.argv[1]
    def batches(devices, n=8):
      mesh = Mesh(np.asarray(devices), ("data",))
      pipe = rjd.create_pipeline(c, 16, 24, mesh, seed=3)
      it = pipe.train_iterator()
      train = [next(it) for _ in range(n)]
      assert len(train[0]["image"].sharding.device_set) == len(devices)
      evals = list(pipe.eval_iterator())
      return [jax.device_get(b) for b in train], [jax.device_get(b) for b in evals]
    train8, eval8 = batches(jax.devices())
    train1, eval1 = batches(jax.devices()[:1])
    for a, b in zip(train8 + eval8, train1 + eval1):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert sum(int(b["mask"].sum()) for b in eval8) == 30 and len(eval8) == 2
    default = rjd.create_pipeline(c, 16, 24, seed=3)  # mesh=None: every device
    batch = next(default.train_iterator())
    assert len(batch["image"].sharding.device_set) == 8 and default.mesh.axis_names == ("data",)
    np.testing.assert_array_equal(jax.device_get(batch)["image"], train8[0]["image"])
    try:
      rjd.create_pipeline(c, 12, 24, Mesh(np.asarray(jax.devices()), ("data",)))
    except ValueError as e:
      assert "global_batch_size=12 is not a positive multiple of the 8 devices" in str(e), e
    else:
      raise AssertionError("batch 12 on 8 devices was accepted")
    print("OK")
""")


@pytest.mark.multidevice
def test_same_batches_on_8_devices_as_on_1(tmp_path):
  source = data_testing.write_cifar10_binary(tmp_path / "src", 20, 30, seed=2)
  rjd.prepare("cifar10", source, tmp_path / "tfds", allow_partial=True)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  result = subprocess.run([sys.executable, "-c", MULTIDEVICE, str(tmp_path / "tfds")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


WORKERS = textwrap.dedent("""
    import sys
    import numpy as np
    import resnet_jax.data as rjd
    if __name__ == "__main__":
      c = rjd.default_config("cifar10")
      c.data_dir = sys.argv[1]
      def batches(num_workers):
        c.num_workers = num_workers
        pipe = rjd.create_pipeline(c, 16, 7, seed=4)
        it = pipe.train_iterator()
        return [np.asarray(next(it)["image"]) for _ in range(7)] + [
            np.asarray(b["image"]) for b in pipe.eval_iterator()]
      for a, b in zip(batches(2), batches(0)):
        np.testing.assert_array_equal(a, b)
      print("OK")
""")


@pytest.mark.multidevice
def test_worker_processes_give_the_same_batches(tmp_path):
  """`num_workers` > 0 (Grain worker processes, loaders pickled) changes no batch."""
  source = data_testing.write_cifar10_binary(tmp_path / "src", 20, 30, seed=2)
  rjd.prepare("cifar10", source, tmp_path / "tfds", allow_partial=True)
  script = tmp_path / "workers.py"
  script.write_text(WORKERS)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  result = subprocess.run([sys.executable, str(script), str(tmp_path / "tfds")], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_prepare_imagenet_folder_tree(tmp_path):
  wnids = ["n01440764", "n01443537"]
  root = data_testing.write_imagenet_folder(tmp_path / "src", wnids, per_class=3, size=(60, 90))
  # A PNG disguised as a JPEG (as in ImageNet) is stored re-encoded as JPEG.
  from PIL import Image
  png = root / "train" / wnids[1] / f"{wnids[1]}_png.JPEG"
  Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(png, format="PNG")
  path = rjd.prepare("imagenet2012", root, tmp_path / "tfds")
  assert path == tmp_path / "tfds" / "imagenet2012" / "5.1.0"
  builder = tfds.builder_from_directory(str(path))
  assert builder.info.splits["train"].num_examples == 7
  assert builder.info.splits["validation"].num_examples == 6
  names = builder.info.features["label"].names
  source = builder.as_data_source("train")
  labels = {r["file_name"].decode(): names[r["label"]] for r in source}
  assert labels[f"{wnids[0]}_train_2.JPEG"] == wnids[0] and labels[png.name] == wnids[1]
  raw = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  assert all(r["image"][:2] == b"\xff\xd8" for r in raw)  # JPEG magic
  c = rjd.default_config("imagenet2012")
  c.data_dir, c.image_size, c.eval_resize, c.scale_range = str(tmp_path / "tfds"), 32, 36, (36, 60)
  pipe = rjd.create_pipeline(c, 4, 4, Mesh(np.asarray(jax.devices()), ("data",)))
  assert next(pipe.train_iterator())["image"].shape == (4, 32, 32, 3)
  assert sum(int(b["mask"].sum()) for b in pipe.eval_iterator()) == 6
  bad = data_testing.write_imagenet_folder(tmp_path / "bad", ["cat"], per_class=1)
  with pytest.raises(ValueError, match="class folder 'cat', not an ILSVRC 2012 wnid"):
    rjd.prepare("imagenet2012", bad, tmp_path / "tfds2")
  with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
    rjd.prepare("imagenet2012", tmp_path, tmp_path / "tfds3")


@pytest.mark.slow
def test_real_cifar10(cifar10_source, tmp_path):
  """He et al. 2015 §4.2's data: 50k train images, 5k per class, the README's statistics."""
  path = rjd.prepare("cifar10", cifar10_source, tmp_path)
  num_test = (cifar10_source / "test_batch.bin").stat().st_size // 3073  # 1,000 here, 10,000 in full
  c = rjd.default_config("cifar10")
  c.data_dir = str(tmp_path)
  pipe = rjd.create_pipeline(c, 128, 500, Mesh(np.asarray(jax.devices()), ("data",)))
  assert (pipe.num_train_examples, pipe.num_eval_examples, pipe.steps_per_epoch) == (50000, num_test, 390)
  images, labels = pipe.dataset.train_images, pipe.dataset.train_labels
  assert np.bincount(labels, minlength=10).tolist() == [5000] * 10
  np.testing.assert_allclose(images.reshape(-1, 3).mean(0), (125.31, 122.95, 113.87), atol=0.01)
  # Bit-exact: the first official record, found by its TFDS id.
  first = np.fromfile(cifar10_source / "data_batch_1.bin", np.uint8, count=3073)
  source = tfds.builder_from_directory(str(path)).as_data_source("train")
  image = first[1:].reshape(3, 32, 32).transpose(1, 2, 0)
  (index,) = np.flatnonzero((images == image).all(axis=(1, 2, 3)))
  record = source[int(index)]
  assert record["id"] == b"train_00000"
  assert record["label"] == first[0] == 6
  np.testing.assert_array_equal(record["image"], image)
  assert sum(int(b["mask"].sum()) for b in pipe.eval_iterator()) == num_test
  batch = next(pipe.train_iterator())
  x = jax.jit(lambda im, k: pipe.preprocess(im, k, True))(batch["image"], jax.random.key(0))
  assert x.shape == (128, 32, 32, 3) and abs(float(x.mean())) < 0.1
