"""Data-parallel train step on 8 fake CPU devices: mesh, BatchNorm modes, scan.

Runs in a subprocess with `--xla_force_host_platform_device_count=8` (the flag
slows single-device runs, so the main pytest process never sets it).
"""
import json
import os
import subprocess
import sys
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORKER = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from resnet_jax.configs import base
from resnet_jax import train as rt
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import step as step_lib, optim, state as state_lib

assert jax.device_count() == 8, jax.devices()
B = 32
config = base.base_config()
config.model.stage_sizes = (1, 1, 1)
config.model.stage_widths = (4, 8, 16)
config.model.stem_width = 4
config.global_batch_size = B
config.bn.ghost_batch_size = B // 8
rng = np.random.RandomState(0)
images = rng.randint(0, 256, (B, 32, 32, 3)).astype(np.uint8)
labels = rng.randint(0, 10, (B,)).astype(np.int32)
preprocess = lambda x, key, train: x.astype(jnp.float32) / 255.0 - 0.5

tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100, 1000))
initial = jax.device_get(state_lib.create_train_state(
    rt.build.model(config, 10), tx, mesh_lib.create_mesh(), (32, 32, 3), 0))

def run(mode, devices, steps=1, steps_per_call=1):
  config.bn.mode = mode
  mesh = mesh_lib.create_mesh(devices)
  model = rt.build.model(config, 10)
  state = jax.device_put(initial, mesh_lib.replicated(mesh))
  sums = jax.device_put(step_lib.zero_train_metrics(), mesh_lib.replicated(mesh))
  fn = rt.make_train_step(model, tx, config, mesh, preprocess, 10, steps_per_call=steps_per_call)
  sharding = NamedSharding(mesh, P(mesh_lib.DATA_AXIS))
  batch = {"image": jax.device_put(images, sharding), "label": jax.device_put(labels, sharding)}
  assert len(batch["image"].sharding.device_set) == len(devices)
  if steps_per_call > 1:
    stacked = NamedSharding(mesh, P(None, mesh_lib.DATA_AXIS))
    batch = jax.tree.map(lambda x: jax.device_put(np.stack([np.asarray(x)] * steps_per_call), stacked), batch)
  for _ in range(steps):
    state, sums = fn(state, sums, batch)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
  leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
  return np.concatenate([np.ravel(x) for x in leaves]), float(sums["loss"]) / int(sums["steps"]), int(sums["steps"])

devs = jax.devices()
g8, loss_g8, _ = run("global", devs)
g1, loss_g1, _ = run("global", devs[:1])
p8, loss_p8, _ = run("per_device", devs)
gh1, loss_gh1, _ = run("ghost", devs[:1])
two_single, _, n1 = run("global", devs, steps=2)
one_scan, _, n2 = run("global", devs, steps=1, steps_per_call=2)
d = lambda a, b: float(np.max(np.abs(a - b)))
print(json.dumps({
  "global8_vs_global1": d(g8, g1), "loss_global8_vs_global1": abs(loss_g8 - loss_g1),
  "perdevice8_vs_ghost1": d(p8, gh1), "loss_perdevice8_vs_ghost1": abs(loss_p8 - loss_gh1),
  "perdevice8_vs_global8": d(p8, g8), "ghost1_vs_global1": d(gh1, g1),
  "scan_vs_single": d(two_single, one_scan), "steps": [n1, n2],
}))
'''


@pytest.mark.multidevice
def test_bn_modes_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  out = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  # "global" is synchronised BN: 8 devices equal 1 device on the same global batch.
  assert r["global8_vs_global1"] < 1e-5 and r["loss_global8_vs_global1"] < 1e-5, r
  # "per_device" normalises each device's 4 examples: the same as ghost BN with groups of 4.
  assert r["perdevice8_vs_ghost1"] < 1e-5 and r["loss_perdevice8_vs_ghost1"] < 1e-5, r
  # ...and both differ from global statistics.
  assert r["perdevice8_vs_global8"] > 1e-3, r
  assert r["ghost1_vs_global1"] > 1e-3, r
  # Two steps per dispatch (lax.scan) equal two dispatched steps.
  assert r["scan_vs_single"] < 1e-6 and r["steps"] == [2, 2], r
