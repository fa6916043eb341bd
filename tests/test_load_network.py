"""A trained network is one call away: `rj.train.load_network` gives the network, its weights
and the preprocessing the run recorded; the committed full run is an ordinary workdir."""
from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
import support

import resnet_jax as rj
from resnet_jax.data import cifar
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import load
from resnet_jax.train import build

ROOT = pathlib.Path(__file__).resolve().parents[1]
FULL_RUN = ROOT / "experiments" / "results" / "cifar10_resnet20_full"


def test_the_committed_run_loads_by_the_documented_call():
  said = []
  net = rj.train.load_network(FULL_RUN, step="best", log=said.append)
  assert (net.name, net.step, net.model.num_classes) == ("cifar_resnet20", 64000, 10)
  # Its only checkpoint was saved without an eval error: metrics.jsonl's evaluation of step 64000 ranks it.
  assert said == ["step 'best' is step 64000: the lowest eval error (8.18%) of the kept checkpoints [64000]"]
  assert net.preprocessing.mean.shape == (32, 32, 3) and "train[:45000]" in net.preprocessing.description
  model, variables = rj.train.load_variables(FULL_RUN)
  assert model == net.model and set(variables) == {"params", "batch_stats"}
  model, variables = net  # unpacks as (model, variables)
  assert rj.models.count_params(variables) == 269_722


def test_the_committed_run_reproduces_its_test_error_through_its_preprocessing():
  """8.40 % on the first 1,000 official test images, as results.json records (84 of 1,000)."""
  source = os.environ.get("RESNET_JAX_CIFAR10_DIR")
  if not source:
    pytest.skip("real CIFAR-10 not configured: set RESNET_JAX_CIFAR10_DIR to a cifar-10-batches-bin folder")
  test = cifar.read_files("cifar10", source).splits["test"]
  images, labels = test.images[:1000], test.labels["label"][:1000]
  net = rj.train.load_network(FULL_RUN)
  errors = sum(int(np.sum(np.argmax(net(images[i:i + 250]), -1) != labels[i:i + 250])) for i in range(0, 1000, 250))
  assert errors == 84
  # Pixels / 255 instead of the recorded mean image: the error doubles (the reason it travels with the weights).
  plain = net.model.apply(net.variables, images.astype(np.float32) / 255.0, train=False)
  assert np.mean(np.argmax(plain, -1) != labels) > 0.15


def test_a_run_records_its_preprocessing_and_is_read_with_another_data_dir(data_dir, tmp_path, monkeypatch):
  local = tmp_path / "tfds"
  shutil.copytree(data_dir, local)
  workdir = tmp_path / "run"
  config = support.smoke_config(local, num_steps=2)
  trained = rj.train.train(config, workdir)
  assert (workdir / Workdir.PREPROCESSING).is_file()

  net = rj.train.load_network(workdir)
  pipe = build.pipeline(config)
  batch = next(iter(pipe.eval_iterator()))
  np.testing.assert_array_equal(net.preprocessing(batch["image"]), pipe.preprocess(batch["image"], None, False))
  want = net.model.apply(net.variables, pipe.preprocess(batch["image"], None, False), train=False)
  np.testing.assert_allclose(net(batch["image"]), want, rtol=1e-5, atol=1e-5)

  # The data moved (another machine): the recorded data dir is gone; this user's default, --data-dir or
  # $TFDS_DATA_DIR finds it.
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  moved = tmp_path / "moved"
  local.rename(moved)
  with pytest.raises(FileNotFoundError, match=rf"^cifar10 is not prepared in {tmp_path / 'home'}/tensorflow_datasets; "
                     r"run .*; or read a prepared copy elsewhere: eval --data-dir DIR"):
    rj.train.evaluate(workdir)
  assert rj.train.evaluate(workdir, data_dir=moved)["error"] == pytest.approx(trained.eval["error"])
  monkeypatch.setenv("TFDS_DATA_DIR", str(moved))
  assert rj.train.evaluate(workdir)["num_examples"] == 50

  # A run from before runs recorded it: computed from the data (and said so), then stored once.
  (workdir / Workdir.PREPROCESSING).unlink()
  said = []
  again = rj.train.load_network(workdir, log=said.append)
  np.testing.assert_array_equal(again.preprocessing.mean, net.preprocessing.mean)
  assert "recorded no preprocessing.json: computed it from the dataset" in said[0]
  rj.train.record_preprocessing(workdir)
  assert load.read_preprocessing(workdir).description == net.preprocessing.description


def test_best_without_any_evaluation_says_what_to_use(tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(FULL_RUN, workdir, ignore=shutil.ignore_patterns("*.png", "report.py"))
  (workdir / "metrics.jsonl").write_text("")
  with pytest.raises(FileNotFoundError, match=r"no evaluated checkpoint in .*checkpoints \(saved steps \[64000\], "
                     r"none with an eval error saved or in metrics.jsonl\); use step='latest' or a step number"):
    rj.train.load_variables(workdir, step="best")
