"""The dataset registry: a new dataset is one `DatasetSource` and one `register_dataset` call."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax.data as rjd
from resnet_jax.data import registry

NUM_TRAIN, NUM_EVAL, SIDE = 40, 12, 16


class _SyntheticSplits(rjd.OpenDataset):
  """Image r of a split is filled with r (channel 0) and the split (channel 1); channel 2 is
  host "augmentation" drawn from the example seed; label r % 3."""

  def __init__(self, config):
    self.num_train_examples, self.num_eval_examples = NUM_TRAIN, NUM_EVAL
    self.image_shape = (SIDE, SIDE, 3)
    self.read_threads = 2
    self._shift = float(config.shift)

  def _image(self, record: int, split: int, noise: int) -> np.ndarray:
    image = np.empty(self.image_shape, np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = record, split, noise
    return image

  def load_train(self, record, example_seed):
    noise = int(np.random.default_rng(example_seed).integers(0, 256))
    return self._image(record, 1, noise), record % 3

  def load_eval(self, record):
    return self._image(record, 2, 0), record % 3

  def preprocess(self, images, rng, train):
    x = images.astype(jnp.float32) / 255.0 - self._shift
    return x + jax.random.uniform(rng, ()) if train else x


class SyntheticSource(rjd.DatasetSource):
  """A 3-class dataset of 16×16 images generated in memory: no files, nothing to prepare."""

  def __init__(self):
    self.info = rjd.DatasetInfo("synthetic16", num_classes=3, image_shape=(SIDE, SIDE, 3),
                                splits={"train": NUM_TRAIN, "test": NUM_EVAL},
                                train_split="train", eval_split="test")

  def config_fields(self):
    return {**super().config_fields(), "shift": 0.5}

  def open(self, config, data_dir):
    del data_dir
    return _SyntheticSplits(config)


@pytest.fixture
def synthetic(monkeypatch):
  """Registers SyntheticSource for one test; the registry is restored afterwards."""
  monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))  # pylint: disable=protected-access
  return rjd.register_dataset(SyntheticSource())


def _records(batch) -> list:
  return [int(r) for r in np.asarray(batch["image"])[:, 0, 0, 0]]


def test_a_new_dataset_is_one_source_and_one_registration(synthetic):
  assert "synthetic16" in rjd.DATASETS and rjd.dataset_source("synthetic16") is synthetic
  from resnet_jax.data.pipeline import NUM_CLASSES  # pylint: disable=g-import-not-at-top
  assert NUM_CLASSES["synthetic16"] == 3 and NUM_CLASSES["cifar10"] == 10
  info = rjd.dataset_info("synthetic16")
  assert (info.num_classes, info.image_shape, info.num_train_examples, info.num_eval_examples) == (
      3, (16, 16, 3), 40, 12)
  c = rjd.default_config("synthetic16")
  assert (c.name, c.train_split, c.eval_split, c.shift, c.prefetch_batches) == (
      "synthetic16", "train", "test", 0.5, 2)
  with pytest.raises(ValueError, match="synthetic16 has no prepare step"):
    rjd.prepare("synthetic16", None, "/nonexistent")

  pipe = rjd.create_pipeline(c, global_batch_size=8, eval_batch_size=5, seed=3)
  assert (pipe.num_classes, pipe.image_shape, pipe.steps_per_epoch, pipe.num_eval_batches) == (
      3, (16, 16, 3), 5, 3)
  it = pipe.train_iterator()
  batches = [next(it) for _ in range(7)]  # into the second epoch
  for step, batch in enumerate(batches):
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == jnp.uint8
    epoch, within = divmod(step, 5)
    # The generic sample stream: epoch e is the permutation of (seed, e), in global batch order.
    expected = np.random.default_rng([3, epoch]).permutation(40)[within * 8:(within + 1) * 8]
    assert _records(batch) == expected.tolist()
    np.testing.assert_array_equal(batch["label"], expected % 3)
    assert (np.asarray(batch["image"])[:, 0, 0, 1] == 1).all()
    # Host randomness of row r of global step s: np.random.default_rng((seed, s, r)).
    noise = [int(np.random.default_rng((3, step, row)).integers(0, 256)) for row in range(8)]
    assert np.asarray(batch["image"])[:, 0, 0, 2].tolist() == noise
  assert len({r for b in batches[:5] for r in _records(b)}) == 40

  state = json.loads(json.dumps(it.get_state()))
  assert state["dataset"] == "synthetic16" and state["step"] == 7
  after = [next(it) for _ in range(2)]
  resumed = rjd.create_pipeline(c, 8, 5, seed=3).train_iterator()
  resumed.set_state(state)
  for a, b in zip(after, [next(resumed) for _ in range(2)]):
    np.testing.assert_array_equal(a["image"], b["image"])  # host randomness from the example seed too

  evals = list(pipe.eval_iterator())
  assert len(evals) == 3 and all(b["image"].shape == (5, 16, 16, 3) for b in evals)
  mask = np.concatenate([b["mask"] for b in evals])
  records = np.concatenate([np.asarray(b["image"])[:, 0, 0, 0] for b in evals])
  assert mask.tolist() == [True] * 12 + [False] * 3
  assert records[:12].tolist() == list(range(12)) and (records[12:] == 0).all()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in evals])[:12], np.arange(12) % 3)

  x = jax.jit(lambda im, k: pipe.preprocess(im, k, True))(batches[0]["image"], jax.random.key(0))
  assert x.dtype == jnp.float32 and x.shape == (8, 16, 16, 3)
  np.testing.assert_allclose(pipe.preprocess(evals[0]["image"], None, False)[0, 0, 0, 0], -0.5)


def test_in_memory_images_are_reusable_by_new_sources(monkeypatch):
  rng = np.random.default_rng(0)
  arrays = (rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20, dtype=np.int32) % 4,
            rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8), np.arange(6, dtype=np.int32) % 4)

  class Arrays(rjd.DatasetSource):
    info = rjd.DatasetInfo("arrays8", 4, (8, 8, 1), {"train": 20, "test": 6}, "train", "test")

    def open(self, config, data_dir):
      return rjd.InMemoryImages(*arrays, preprocess=lambda x, rng, train: x.astype(jnp.float32))

  monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))  # pylint: disable=protected-access
  rjd.register_dataset(Arrays())
  pipe = rjd.create_pipeline(rjd.default_config("arrays8"), 4, 4)
  assert (pipe.num_classes, pipe.image_shape, pipe.steps_per_epoch) == (4, (8, 8, 1), 5)
  evals = list(pipe.eval_iterator())
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in evals])[:6], arrays[2])
  batch = next(pipe.train_iterator())
  order = np.random.default_rng([0, 0]).permutation(20)[:4]
  np.testing.assert_array_equal(batch["image"], arrays[0][order])
  with pytest.raises(ValueError, match=r"train images uint8 \(20, 8, 8\)"):
    rjd.InMemoryImages(arrays[0][..., 0], *arrays[1:], preprocess=None)


def test_unknown_dataset_is_a_one_line_error_listing_the_valid_ones(tmp_path):
  expected = "unknown dataset 'mnist'; valid: cifar10, cifar100, imagenet2012"
  config = rjd.default_config("cifar10")
  config.name = "mnist"
  for call in (lambda: rjd.dataset_info("mnist"), lambda: rjd.default_config("mnist"),
               lambda: rjd.prepare("mnist", None, tmp_path),
               lambda: rjd.create_pipeline(config, 8, 8)):
    with pytest.raises(ValueError) as e:
      call()
    assert str(e.value) == expected
  with pytest.raises(ValueError, match=r"^unknown dataset 'cifar'; valid: .* \(did you mean cifar10, cifar100\?\)$"):
    rjd.dataset_info("cifar")
  with pytest.raises(TypeError, match="needs a DatasetSource"):
    rjd.register_dataset("mnist")


def test_dataset_info_reads_no_files(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "nothing-here"))
  cifar10, cifar100, imagenet = (rjd.dataset_info(n) for n in ("cifar10", "cifar100", "imagenet2012"))
  assert (cifar10.num_classes, cifar10.image_shape, cifar10.num_train_examples, cifar10.num_eval_examples,
          cifar10.train_split, cifar10.eval_split) == (10, (32, 32, 3), 50000, 10000, "train", "test")
  assert (cifar100.num_classes, cifar100.num_train_examples) == (100, 50000)
  assert (imagenet.num_classes, imagenet.image_shape, imagenet.num_train_examples,
          imagenet.num_eval_examples, imagenet.eval_split) == (1000, (224, 224, 3), 1281167, 50000,
                                                               "validation")
  # He et al. 2015 §4.2's 45k/5k split, and any TFDS slicing.
  assert (cifar10.num_examples("train[:45000]"), cifar10.num_examples("train[45000:]")) == (45000, 5000)
  assert cifar10.num_examples("train[:10%]+test") == 15000
  with pytest.raises(ValueError, match="bad split 'valid' for cifar10"):
    cifar10.num_examples("valid")
  assert rjd.DATASETS == rjd.dataset_names() == ("cifar10", "cifar100", "imagenet2012")
  for name in rjd.DATASETS:  # the config's defaults are the info's
    c = rjd.default_config(name)
    info = rjd.dataset_info(name)
    assert (c.train_split, c.eval_split, c.image_size) == (info.train_split, info.eval_split,
                                                           info.image_shape[0])
  assert not (tmp_path / "nothing-here").exists()


def test_tfds_source_paths_come_from_the_source(tmp_path):
  from resnet_jax.data.prepare import check_prepared, dataset_dir, prepare_command  # pylint: disable=g-import-not-at-top
  assert dataset_dir("cifar100", tmp_path) == tmp_path / "cifar100" / "3.0.2"
  assert dataset_dir("imagenet2012", tmp_path) == tmp_path / "imagenet2012" / "5.1.0"
  assert check_prepared("imagenet2012", tmp_path) is None
  assert prepare_command("imagenet2012", pathlib.Path("/d")) == (
      "resnet-jax prepare imagenet2012 --source IMAGENET_DIR --data-dir /d")
  assert prepare_command("cifar10", pathlib.Path("/d")) == (
      "resnet-jax prepare cifar10 --source DIR_OR_ARCHIVE --data-dir /d")
