"""Data layer: preparation from every official CIFAR format, pipelines, augmentation, errors."""
from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh

import resnet_jax.data as rjd
from resnet_jax.data import augment
from resnet_jax.data import cifar
from resnet_jax.data import testing as data_testing


def _mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def _by_id(directory: pathlib.Path, split: str) -> dict:
  source = tfds.builder_from_directory(str(directory)).as_data_source(split)
  return {r["id"].decode(): r for r in source.__getitems__(range(len(source)))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
  """A prepared tiny CIFAR-10 (5×20 train, 30 test) in the official binary layout."""
  root = tmp_path_factory.mktemp("tiny")
  source = data_testing.write_cifar10_binary(root / "src", num_train_per_batch=20, num_test=30, seed=1)
  rjd.prepare("cifar10", source, root / "tfds", allow_partial=True)
  return root


def _config(tiny: pathlib.Path, **fields):
  c = rjd.default_config("cifar10")
  c.data_dir = str(tiny / "tfds")
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def test_write_cifar10_binary_is_the_official_layout(tmp_path):
  folder = data_testing.write_cifar10_binary(tmp_path, num_train_per_batch=3, num_test=4, seed=0)
  assert sorted(p.name for p in folder.iterdir()) == sorted(
      [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"])
  assert (folder / "data_batch_1.bin").stat().st_size == 3 * 3073
  assert (folder / "test_batch.bin").stat().st_size == 4 * 3073
  files = cifar.read_files("cifar10", folder, allow_partial=True)
  assert files.splits["train"].images.shape == (15, 32, 32, 3)
  assert files.label_names["label"][0] == "airplane"


@pytest.mark.parametrize("name,binary,archive", [
    ("cifar10", False, False), ("cifar10", True, True), ("cifar100", True, False),
    ("cifar100", False, True)])
def test_prepare_reads_back_bit_exact(tmp_path, name, binary, archive):
  folder = data_testing.write_cifar(tmp_path / "src", name, binary=binary, num_train=12, num_test=5, seed=3)
  expected = cifar.read_files(name, folder, allow_partial=True)
  source = data_testing.make_archive(folder, tmp_path / cifar.LAYOUTS[name][0 if binary else 1].archive
                                     ) if archive else folder.parent  # the parent folder works too
  path = rjd.prepare(name, source, tmp_path / "tfds", allow_partial=True)
  assert path == tmp_path / "tfds" / name / "3.0.2"
  builder = tfds.builder_from_directory(str(path))
  assert builder.info.name == name and str(builder.info.version) == "3.0.2"
  assert builder.info.features["label"].names == expected.label_names["label"]
  for split in ("train", "test"):
    records = _by_id(path, split)
    data = expected.splits[split]
    assert len(records) == len(data.images)
    for i in range(len(data.images)):
      record = records[f"{split}_{i:05d}"]
      np.testing.assert_array_equal(record["image"], data.images[i])
      for key, labels in data.labels.items():
        assert record[key] == labels[i]


def test_prepare_is_idempotent_and_needs_no_source_once_done(tiny):
  start = time.perf_counter()
  again = rjd.prepare("cifar10", tiny / "does-not-exist", tiny / "tfds")
  assert again == tiny / "tfds" / "cifar10" / "3.0.2"
  assert time.perf_counter() - start < 2.0


def test_incomplete_dataset_is_not_prepared(tiny, tmp_path):
  import shutil
  copy = tmp_path / "tfds"
  shutil.copytree(tiny / "tfds", copy)
  shard = next((copy / "cifar10" / "3.0.2").glob("cifar10-train.array_record*"))
  shard.unlink()
  with pytest.raises(FileNotFoundError, match="incomplete.*resnet-jax prepare cifar10"):
    rjd.prepare("cifar10", None, copy)


def test_prepare_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid: cifar10"):
    rjd.prepare("mnist", None, tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    rjd.prepare("cifar10", tmp_path / "nope", tmp_path / "tfds")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no official cifar10 files in .*cifar-10-batches-bin"):
    rjd.prepare("cifar10", tmp_path / "empty", tmp_path / "tfds")
  folder = data_testing.write_cifar10_binary(tmp_path / "bad", 4, 4, 0)
  with open(folder / "data_batch_3.bin", "ab") as f:
    f.write(b"\x00" * 10)  # a truncated/extra record
  with pytest.raises(ValueError, match="corrupt CIFAR file .*data_batch_3.bin"):
    rjd.prepare("cifar10", folder, tmp_path / "tfds")
  folder = data_testing.write_cifar10_binary(tmp_path / "bad_label", 4, 4, 0)
  data = bytearray((folder / "test_batch.bin").read_bytes())
  data[3073] = 17
  (folder / "test_batch.bin").write_bytes(bytes(data))
  with pytest.raises(ValueError, match="test record 1 .*label 17"):
    rjd.prepare("cifar10", folder, tmp_path / "tfds")
  assert not (tmp_path / "tfds" / "cifar10" / "3.0.2").exists()


def test_offline_download_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setitem(cifar.OFFICIAL_URLS, "cifar10", ("http://127.0.0.1:9/cifar-10-binary.tar.gz", "0"))
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match="cannot download .*--source"):
    rjd.prepare("cifar10", None, tmp_path)
  assert time.perf_counter() - start < 10


def test_unprepared_dataset_names_the_prepare_command(tmp_path):
  c = rjd.default_config("cifar100")
  c.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="resnet-jax prepare cifar100"):
    rjd.create_pipeline(c, 8, 8, _mesh())


def test_default_config_fields():
  c = rjd.default_config("cifar10")
  assert (c.train_split, c.eval_split, c.normalization, c.image_size, c.augment) == (
      "train", "test", "per_pixel_mean", 32, True)
  c.data_dir = "/x"  # typed None field, overridable
  i = rjd.default_config("imagenet2012")
  assert (i.train_augment, tuple(i.scale_range), i.eval_resize, i.image_size, i.ten_crop) == (
      "scale", (256, 480), 256, 224, False)
  with pytest.raises(ValueError, match="unknown dataset"):
    rjd.default_config("cifar")


def test_pipeline_contract(tiny):
  pipe = rjd.create_pipeline(_config(tiny), global_batch_size=16, eval_batch_size=7, mesh=_mesh(), seed=0)
  assert (pipe.num_classes, pipe.image_shape) == (10, (32, 32, 3))
  assert (pipe.num_train_examples, pipe.num_eval_examples, pipe.steps_per_epoch) == (100, 30, 6)
  batch = next(pipe.train_iterator())
  assert set(batch) == {"image", "label"}
  assert isinstance(batch["image"], jax.Array) and batch["image"].dtype == jnp.uint8
  assert batch["image"].shape == (16, 32, 32, 3) and batch["label"].dtype == jnp.int32
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")


def test_mesh_none_is_a_data_mesh_over_all_devices(tiny):
  pipe = rjd.create_pipeline(_config(tiny), 16, 10, seed=2)
  assert pipe.mesh.axis_names == ("data",) and list(pipe.mesh.devices.flat) == jax.devices()
  explicit = rjd.create_pipeline(_config(tiny), 16, 10, _mesh(), seed=2)
  for a, b in zip([next(pipe.train_iterator())] + list(pipe.eval_iterator()),
                  [next(explicit.train_iterator())] + list(explicit.eval_iterator())):
    assert a["image"].sharding.is_equivalent_to(b["image"].sharding, 4)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_train_epochs_are_seeded_permutations(tiny):
  pipe = rjd.create_pipeline(_config(tiny), 16, 10, _mesh(), seed=0)
  ids = {bytes(np.asarray(im).tobytes()): i for i, im in enumerate(pipe.dataset.train_images)}
  it = pipe.train_iterator()
  epochs = []
  for _ in range(3):
    seen = [ids[np.asarray(im).tobytes()] for _ in range(pipe.steps_per_epoch) for im in next(it)["image"]]
    assert len(set(seen)) == 96  # floor(100 / 16) steps, no repeats within an epoch
    epochs.append(seen)
  assert epochs[0] != epochs[1] != epochs[2]
  same = [next(rjd.create_pipeline(_config(tiny), 16, 10, _mesh(), seed=0).train_iterator())["label"]
          for _ in range(2)]
  np.testing.assert_array_equal(same[0], same[1])
  other = next(rjd.create_pipeline(_config(tiny), 16, 10, _mesh(), seed=1).train_iterator())
  assert not np.array_equal(other["image"], same[0])


def test_train_iterator_state_resumes_exactly(tiny):
  import json
  pipe = rjd.create_pipeline(_config(tiny), 16, 10, _mesh(), seed=5)
  it = pipe.train_iterator()
  for _ in range(7):  # into the second epoch
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(4)]
  resumed = rjd.create_pipeline(_config(tiny), 16, 10, _mesh(), seed=5).train_iterator()
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(4)]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  with pytest.raises(ValueError, match="global_batch_size"):
    rjd.create_pipeline(_config(tiny), 20, 10, _mesh(), seed=5).train_iterator().set_state(state)


@pytest.mark.parametrize("eval_batch", [7, 30, 64])
def test_eval_covers_every_example_once(tiny, eval_batch):
  pipe = rjd.create_pipeline(_config(tiny), 16, eval_batch, _mesh())
  images, labels, masks = [], [], []
  for batch in pipe.eval_iterator():
    # A batch larger than the split is bounded to it (it would hold only padding beyond).
    assert batch["image"].shape == (min(eval_batch, 30), 32, 32, 3) and batch["mask"].dtype == jnp.bool_
    images.append(np.asarray(batch["image"]))
    labels.append(np.asarray(batch["label"]))
    masks.append(np.asarray(batch["mask"]))
  mask = np.concatenate(masks)
  assert mask.sum() == 30 and mask[:30].all() and len(images) == -(-30 // eval_batch)
  np.testing.assert_array_equal(np.concatenate(images)[:30], pipe.dataset.eval_images)
  np.testing.assert_array_equal(np.concatenate(labels)[:30], pipe.dataset.eval_labels)


def test_split_slicing_and_45k_5k_style_split(tiny):
  pipe = rjd.create_pipeline(_config(tiny, train_split="train[:90]", eval_split="train[90:]"), 10, 10,
                             _mesh())
  assert (pipe.num_train_examples, pipe.num_eval_examples, pipe.steps_per_epoch) == (90, 10, 9)
  full = rjd.create_pipeline(_config(tiny), 10, 10, _mesh())
  np.testing.assert_array_equal(pipe.dataset.eval_images, full.dataset.train_images[90:])
  with pytest.raises(ValueError, match="bad split 'valid'"):
    rjd.create_pipeline(_config(tiny, eval_split="valid"), 10, 10, _mesh())


def test_normalisation_statistics(tiny):
  pipe = rjd.create_pipeline(_config(tiny), 10, 10, _mesh())
  images = pipe.dataset.train_images
  x = np.asarray(pipe.preprocess(jnp.asarray(images), None, False))
  np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)  # per-pixel mean subtracted
  pipe = rjd.create_pipeline(_config(tiny, normalization="per_channel"), 10, 10, _mesh())
  x = np.asarray(pipe.preprocess(jnp.asarray(images), None, False)).reshape(-1, 3)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(x.std(0), 1.0, atol=1e-4)
  with pytest.raises(ValueError, match="normalization='zca'"):
    rjd.create_pipeline(_config(tiny, normalization="zca"), 10, 10, _mesh())


def test_random_crop_flip_is_a_padded_window():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8, 8, 3)), jnp.float32)
  out = jax.jit(augment.random_crop_flip, static_argnums=2)(images, jax.random.key(3), 2)
  again = jax.jit(augment.random_crop_flip, static_argnums=2)(images, jax.random.key(3), 2)
  np.testing.assert_array_equal(out, again)
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets, flips = set(), 0
  for i in range(64):
    matches = [(y, x, f) for y in range(5) for x in range(5) for f in (0, 1)
               if np.array_equal(np.asarray(out[i]), padded[i, y:y + 8, x:x + 8][:, ::-1] if f
                                 else padded[i, y:y + 8, x:x + 8])]
    assert len(matches) == 1
    offsets.add(matches[0][:2])
    flips += matches[0][2]
  assert len(offsets) > 10 and 16 < flips < 48
  assert not np.array_equal(out, augment.random_crop_flip(images, jax.random.key(4), 2))


def test_cifar_train_preprocess_pads_with_the_mean(tiny):
  pipe = rjd.create_pipeline(_config(tiny), 10, 10, _mesh())
  images = jnp.asarray(pipe.dataset.train_images[:32])
  out = np.asarray(jax.jit(lambda x, k: pipe.preprocess(x, k, True))(images, jax.random.key(0)))
  plain = np.asarray(pipe.preprocess(images, None, False))
  assert out.shape == (32, 32, 32, 3) and out.dtype == np.float32
  assert not np.array_equal(out, plain)
  assert np.isclose(out, 0.0).all(axis=-1).any()  # some padded pixels = the (subtracted) mean
  no_aug = rjd.create_pipeline(_config(tiny, augment=False), 10, 10, _mesh())
  np.testing.assert_array_equal(no_aug.preprocess(images, jax.random.key(0), True), plain)


def test_batch_size_must_divide_over_devices(tiny):
  with pytest.raises(ValueError, match="global_batch_size=0 is not a positive multiple"):
    rjd.create_pipeline(_config(tiny), 0, 10, _mesh())


def test_mock_data_cifar10(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    c = rjd.default_config("cifar10")
    c.data_dir = str(tmp_path)
    pipe = rjd.create_pipeline(c, 8, 5, _mesh())
    assert pipe.num_train_examples == 24 and pipe.steps_per_epoch == 3
    assert next(pipe.train_iterator())["image"].shape == (8, 32, 32, 3)
    assert sum(int(b["mask"].sum()) for b in pipe.eval_iterator()) == 24


def _mock_imagenet_source(builder, split, decoders=None, **kwargs):
  """Encoded JPEGs of random shapes (TFDS's own mock encodes them with TensorFlow)."""
  del builder, kwargs
  assert decoders is not None  # resnet_jax decodes ImageNet JPEGs itself
  rng = np.random.default_rng(len(split))
  return [{"image": data_testing.synthetic_jpeg(rng, int(rng.integers(40, 160)), int(rng.integers(40, 160))),
           "label": int(rng.integers(0, 1000)), "file_name": f"{i}.JPEG"} for i in range(13)]


@pytest.mark.parametrize("train_augment,lighting,ten_crop", [("scale", True, False),
                                                             ("inception", False, True)])
def test_mock_data_imagenet(tmp_path, train_augment, lighting, ten_crop):
  with tfds.testing.mock_data(as_data_source_fn=_mock_imagenet_source):
    i = rjd.default_config("imagenet2012")
    i.data_dir = str(tmp_path)
    i.image_size, i.eval_resize, i.scale_range = 48, 56, (56, 96)
    i.train_augment, i.pca_lighting, i.ten_crop, i.num_threads = train_augment, lighting, ten_crop, 2
    pipe = rjd.create_pipeline(i, 4, 5, _mesh())
    assert (pipe.num_classes, pipe.num_train_examples, pipe.image_shape) == (1000, 13, (48, 48, 3))
    batch = next(pipe.train_iterator())
    assert batch["image"].shape == (4, 48, 48, 3) and batch["image"].dtype == jnp.uint8
    again = next(rjd.create_pipeline(i, 4, 5, _mesh()).train_iterator())
    np.testing.assert_array_equal(batch["image"], again["image"])  # seeded host augmentation
    x = jax.jit(lambda im, k: pipe.preprocess(im, k, True))(batch["image"], jax.random.key(0))
    assert x.shape == (4, 48, 48, 3) and x.dtype == jnp.float32
    batches = list(pipe.eval_iterator())
    assert sum(int(b["mask"].sum()) for b in batches) == 13 and len(batches) == 3
    side = 56 if ten_crop else 48
    assert batches[0]["image"].shape == (5, side, side, 3)
    if ten_crop:
      assert augment.ten_crop(batches[0]["image"], 48).shape == (10, 5, 48, 48, 3)
