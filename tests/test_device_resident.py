"""Device-resident train batches (data/device_resident.py): exactly the host pipeline's batches."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import resnet_jax.data as rjd
from resnet_jax import train as rt
from resnet_jax.configs import cifar10_resnet20
from resnet_jax.data import device_resident

B = 32  # 320 train images: 10 steps per epoch


def _pipe(data_dir, placement, seed=7, mesh=None):
  c = rjd.default_config("cifar10")
  c.data_dir, c.placement = str(data_dir), placement
  return rjd.create_pipeline(c, B, 20, mesh=mesh, seed=seed)


def _equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    assert a[key].sharding.is_equivalent_to(b[key].sharding, a[key].ndim), key
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_auto_places_cifar_on_device_and_host_is_kept_on_request(data_dir):
  assert _pipe(data_dir, "auto").placement == "device"
  assert _pipe(data_dir, "host").placement == "host"
  assert type(_pipe(data_dir, "device").train_iterator()).__name__ == "DeviceResidentTrainIterator"
  assert type(_pipe(data_dir, "host").train_iterator()) is rjd.TrainIterator


def test_device_batches_equal_host_batches_across_epochs_and_k_step_takes(data_dir):
  host, device = _pipe(data_dir, "host").train_iterator(), _pipe(data_dir, "device").train_iterator()
  for _ in range(13):  # into the second epoch
    _equal(next(host), next(device))
  for k in (4, 3, 5):  # 17..20 within epoch 1; 20..24 crosses into epoch 2
    _equal(host.take(k), device.take(k))
  assert host.get_state() == device.get_state() and host.get_state()["step"] == 25


def test_resume_state_is_shared_by_both_placements(data_dir):
  host = _pipe(data_dir, "host").train_iterator()
  for _ in range(6):
    next(host)
  state = json.loads(json.dumps(host.get_state()))
  expected = [next(host) for _ in range(6)]
  device = _pipe(data_dir, "device").train_iterator()
  device.set_state(state)
  for a in expected:
    _equal(a, next(device))
  with pytest.raises(ValueError, match="seed"):
    _pipe(data_dir, "device", seed=8).train_iterator().set_state(state)


def test_placement_errors_name_the_value(data_dir, monkeypatch):
  with pytest.raises(ValueError, match=r"data.placement='gpu' is not one of \('auto', 'device', 'host'\)"):
    _pipe(data_dir, "gpu")
  arrays = (np.zeros((100, 32, 32, 3), np.uint8), np.zeros((100,), np.int32))
  monkeypatch.setattr(device_resident, "device_memory_bytes", lambda devices: 4 * 307_200 - 1)
  assert device_resident.resolve_placement("auto", arrays, jax.devices(), "cifar10") == "host"
  with pytest.raises(ValueError, match="more than 25% of the"):
    device_resident.resolve_placement("device", arrays, jax.devices(), "cifar10")
  with pytest.raises(ValueError, match="not held in memory"):
    device_resident.resolve_placement("device", None, jax.devices(), "imagenet2012")
  assert device_resident.resolve_placement("auto", None, jax.devices(), "imagenet2012") == "host"


def test_training_is_identical_on_both_placements(data_dir, tmp_path):
  def run(placement):
    config = cifar10_resnet20.get_config("smoke")
    config.data.update({"data_dir": str(data_dir), "train_split": "train", "eval_split": "test",
                        "placement": placement})
    config.update({"num_steps": 4, "steps_per_dispatch": 2, "eval_batch_size": 20,
                   "log_every_steps": 2})
    state = rt.train(config, tmp_path / placement).state
    return jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.opt_state)))
  for a, b in zip(run("host"), run("device")):
    np.testing.assert_array_equal(a, b)


WORKER_8_DEVICES = '''
import sys
import numpy as np
import resnet_jax.data as rjd
def pipe(placement):
  c = rjd.default_config("cifar10")
  c.data_dir, c.placement = sys.argv[1], placement
  return rjd.create_pipeline(c, 32, 24, seed=1)
host, device = pipe("host").train_iterator(), pipe("device").train_iterator()
for a, b in [(next(host), next(device)) for _ in range(3)] + [(host.take(4), device.take(4))]:
  for key in a:
    assert len(b[key].sharding.device_set) == 8 and b[key].sharding.is_equivalent_to(a[key].sharding, a[key].ndim)
    assert {s.data.shape for s in b[key].addressable_shards} == {s.data.shape for s in a[key].addressable_shards}
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
print("ok")
'''


@pytest.mark.multidevice
def test_device_batches_equal_host_batches_on_8_devices(data_dir):
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  out = subprocess.run([sys.executable, "-c", WORKER_8_DEVICES, str(data_dir)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
