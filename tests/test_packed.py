"""Packed runs: R runs in one program equal the same runs trained alone, each in its own workdir.

Float32 SGD trajectories diverge chaotically from any rounding difference (the packed
program's vmapped convolutions sum in another order), so equivalence is checked step by
step: each packed step, started from the same state as the run's own step, agrees to 1e-6
relative (global L2 over parameters, BatchNorm statistics and momentum). The data each run
sees is checked bit for bit.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import support

import resnet_jax as rj
from resnet_jax import cli
from resnet_jax import configs
from resnet_jax.train import build, packing
from resnet_jax.storage import checkpoints as ckpt_lib
from resnet_jax.storage import records
from resnet_jax.storage.workdir import Workdir
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import ema as ema_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib
from resnet_jax.data.train_iterator import PackedTrainIterator

ROOT = pathlib.Path(__file__).resolve().parents[1]


def relative_l2(a, b) -> float:
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  a, b = flat(a), flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _trees(state):
  return (state.params, state.batch_stats, state.opt_state, state_lib.ema_of(state))


def packed_vs_alone(cfgs, start_step: int = 0):
  """One step of each run alone and of all runs packed in one stacked program (`vmap`, what an
  accelerator's group runs), from the same states and batches: (relative L2 per run, whether
  each run's batch equals its own iterator's, losses)."""
  first = build.experiment(cfgs[0])
  exps = [first] + [build.experiment(c, first.mesh, first.pipeline) for c in cfgs[1:]]
  pipe, mesh = first.pipeline, first.mesh
  states = [state_lib.create_train_state(e.model, e.tx, mesh, e.image_shape, e.config.seed,
                                         ema=ema_lib.enabled(e.config)) for e in exps]
  step = jax.device_put(jnp.asarray(start_step, jnp.int32), mesh_lib.replicated(mesh))  # as a restored state's
  states = [s.replace(step=step) for s in states]
  iterators, own = pipe.train_iterators([c.seed for c in cfgs]), pipe.train_iterators([c.seed for c in cfgs])
  for it in iterators + own:
    it.set_state({**it.get_state(), "step": start_step})
  alone_batches = [next(it) for it in own]   # each run's own batch, as its training reads it
  packed_batches = next(PackedTrainIterator(iterators, mesh, "data"))
  same_data = [np.array_equal(np.asarray(packed_batches["image"][r]), np.asarray(alone_batches[r]["image"]))
               for r in range(len(cfgs))]
  zeros = lambda: step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
  copy = lambda t: jax.tree.map(jnp.copy, t)
  alone = []
  for r, exp in enumerate(exps):
    fn = step_lib.make_train_step(exp.model, exp.tx, exp.config, mesh, pipe.preprocess, pipe.num_classes)
    alone.append(fn(copy(states[r]), zeros(), alone_batches[r]))
  packed_fn = step_lib.build_packed_train_step(first.train_model, [e.tx for e in exps], first.config, mesh,
                                               pipe.preprocess, pipe.num_classes,
                                               run_configs=[e.config for e in exps])
  stack = lambda ts: jax.tree.map(lambda *x: jnp.stack(x), *ts)
  packed_state, packed_sums = packed_fn(stack([copy(s) for s in states]), stack([zeros() for _ in exps]),
                                        packed_batches)
  diffs = [relative_l2(jax.tree.map(lambda x: x[r], _trees(packed_state)), _trees(alone[r][0]))
           for r in range(len(exps))]
  losses = [(float(packed_sums["loss"][r]), float(alone[r][1]["loss"])) for r in range(len(exps))]
  return diffs, same_data, losses


@pytest.mark.parametrize("overrides, start_step, tolerance", [
    ({}, 0, 1e-6),                                   # ghost BN, on-device crop/flip, option A
    ({"model.shortcut": "B"}, 0, 1e-6),              # projection shortcuts
    ({}, 9, 1e-6),                                   # step 9 -> 10 crosses the first lr boundary
    ({"bn.mode": "global"}, 0, 1e-6),
    ({"dtype": "bfloat16"}, 0, 2e-2),                # bf16 compute: its own rounding
])
def test_each_packed_step_equals_the_runs_own_step(data_dir, overrides, start_step, tolerance):
  cfgs = [support.smoke_config(data_dir, seed=seed, **overrides) for seed in (0, 1, 2)]
  cfgs[2].optimizer.learning_rate = 0.05  # a value variant: its own optimiser in the packed program
  diffs, same_data, losses = packed_vs_alone(cfgs, start_step)
  assert all(same_data), same_data
  assert max(diffs) <= tolerance, diffs
  for packed, alone in losses:
    assert packed == pytest.approx(alone, rel=10 * tolerance)


WORKER = r'''
import json, sys
sys.path.insert(0, "tests")
import jax, support
import test_packed
assert jax.device_count() == 8
out = {}
for mode in ("ghost", "per_device"):
  cfgs = [support.smoke_config(sys.argv[1], seed=s, **{"bn.mode": mode}) for s in (0, 1)]
  diffs, same, _ = test_packed.packed_vs_alone(cfgs)
  out[mode] = {"diffs": diffs, "same_data": same}
print(json.dumps(out))
'''


@pytest.mark.multidevice
def test_packed_steps_on_8_devices(data_dir):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
  run = subprocess.run([sys.executable, "-c", WORKER, str(data_dir)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  for mode, r in out.items():
    assert all(r["same_data"]) and max(r["diffs"]) <= 1e-6, (mode, r)


def _records(workdir, kind):
  return records.latest_per_step(Workdir(workdir).read_metrics(), kind)


def test_packed_runs_write_ordinary_workdirs_like_runs_alone(data_dir, tmp_path):
  cfgs = [support.smoke_config(data_dir, seed=s, num_steps=12) for s in (0, 1)]
  results = rj.train.train_packed(cfgs, [tmp_path / "packed" / f"seed{s}" for s in (0, 1)])
  for s, cfg in zip((0, 1), cfgs):
    alone = rj.train.train(cfg, tmp_path / "alone" / f"seed{s}")
    packed_dir, alone_dir = tmp_path / "packed" / f"seed{s}", tmp_path / "alone" / f"seed{s}"
    assert results[s].step == alone.step == 12
    for kind in ("train", "eval"):
      a, b = _records(packed_dir, kind), _records(alone_dir, kind)
      assert list(a) == list(b), kind
      for step in a:  # the same steps; values as close as float32 trajectories stay over 12 steps
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=1e-3), (kind, step)
    assert json.loads((packed_dir / "config.json").read_text()) == json.loads((alone_dir / "config.json").read_text())
    assert ckpt_lib.Checkpointer(packed_dir / "checkpoints").manager.all_steps() == \
        ckpt_lib.Checkpointer(alone_dir / "checkpoints").manager.all_steps()
    # An ordinary workdir: eval and load_variables work on it unchanged.
    assert rj.train.evaluate(packed_dir)["step"] == 12
    model, variables = rj.train.load_variables(packed_dir)
    assert set(variables) == {"params", "batch_stats"}
    sessions = Workdir(packed_dir).read_sessions()
    assert [s["event"] for s in sessions] == ["start", "end"] and sessions[-1]["reason"] == "finished"


def test_resume_packed_alone_and_with_another_run_count(data_dir, tmp_path):
  dirs = [tmp_path / f"seed{s}" for s in (0, 1, 2)]
  cfg = lambda seed, steps: support.smoke_config(data_dir, seed=seed, num_steps=steps)
  rj.train.train_packed([cfg(0, 6), cfg(1, 6)], dirs[:2])            # packed to step 6
  alone = rj.train.train(cfg(0, 9), dirs[0])                          # packed -> alone
  assert alone.step == 9
  results = rj.train.train_packed([cfg(0, 12), cfg(1, 12), cfg(2, 12)], dirs)  # alone -> packed, a third joins
  assert [r.step for r in results] == [12, 12, 12]
  for d in dirs:
    train_steps = [r["step"] for r in Workdir(d).read_metrics() if r["kind"] == "train"]
    assert train_steps[-1] == 12
  # Each run's data stream went on where it stopped: seed 0's run trained steps 0-6, 6-9, 9-12.
  starts = [s["step"] for s in Workdir(dirs[0]).read_sessions() if s["event"] == "start"]
  assert starts == [0, 6, 9]


def test_a_diverging_run_stops_and_the_others_go_on(data_dir, tmp_path):
  cfgs = [support.smoke_config(data_dir, seed=s, num_steps=10) for s in (0, 1)]
  cfgs[1].optimizer.learning_rate = 1e8  # diverges within a few steps
  results = rj.train.train_packed(cfgs, [tmp_path / "ok", tmp_path / "nan"])
  assert results[0].step == 10 and results[0].error is None
  assert isinstance(results[1].error, rj.train.NonFiniteLossError)
  assert "NaN/Inf at step" in str(results[1].error)
  end = Workdir(tmp_path / "nan").read_sessions()[-1]
  assert end["event"] == "end" and end["reason"].startswith("NonFiniteLossError")
  assert Workdir(tmp_path / "ok").read_sessions()[-1]["reason"] == "finished"


def test_time_limit_saves_every_run_and_the_same_call_continues(data_dir, tmp_path):
  cfgs = [support.smoke_config(data_dir, seed=s, num_steps=40, log_every_steps=2) for s in (0, 1)]
  dirs = [tmp_path / "a", tmp_path / "b"]
  first = rj.train.train_packed(cfgs, dirs, time_limit=0.0)
  assert all(r.stopped == "time limit" and r.step < 40 for r in first)
  for d, r in zip(dirs, first):
    assert ckpt_lib.Checkpointer(d / "checkpoints").latest_step() == r.step
  again = rj.train.train_packed(cfgs, dirs)
  assert [r.step for r in again] == [40, 40] and not any(r.stopped for r in again)


def test_runs_that_cannot_share_a_program_are_refused_in_one_line(data_dir):
  a = support.smoke_config(data_dir, seed=0)
  b = support.smoke_config(data_dir, seed=1, **{"model.stage_widths": (4, 8, 32)})
  with pytest.raises(rj.train.ConfigError, match=r"cannot be packed into one program: model.stage_widths is "
                                                  r"\[4, 8, 16\] in one and \[4, 8, 32\] in another") as info:
    packing.check_packable([a, b])
  assert "\n" not in str(info.value)
  c = support.smoke_config(data_dir, seed=1, **{"optimizer.momentum": 0.0})
  with pytest.raises(rj.train.ConfigError, match=r"optimiser states differ in structure \(momentum: True vs False\)"):
    packing.check_packable([a, c])


def test_groups_pack_what_can_share_a_program():
  base = configs.load("cifar10_resnet20:smoke")
  variants = [configs.apply_overrides(base, o) for o in (
      {"seed": 0}, {"seed": 1}, {"model.shortcut": "B"}, {"seed": 2, "optimizer.learning_rate": 0.05},
      {"model.shortcut": "B", "seed": 1}, {"model.shortcut": "gate", "model.shortcut_options.gate_bias_init": -6.0},
      {"model.shortcut": "gate", "model.shortcut_options.gate_bias_init": 0.0})]
  assert packing.groups(variants) == [[0, 1, 3], [2, 4], [5, 6]]


def _state_leaves(result):
  state = result.state
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.opt_state)))]


def test_a_cpu_group_trains_each_run_bit_for_bit_as_alone(data_dir, tmp_path):
  """On a CPU a group dispatches each run's own program: a run's bits do not depend on its
  group. Packed three together, and after a crash that left seed 0 at step 2 and seeds 1-2
  unstarted (the rerun trains them as groups of one and of two), the runs end bit-identical."""
  cfg = lambda seed, steps: support.smoke_config(data_dir, seed=seed, num_steps=steps, checkpoint_every_steps=2)
  seeds = (0, 1, 2)
  packed = rj.train.train_packed([cfg(s, 4) for s in seeds], [tmp_path / "packed" / f"seed{s}" for s in seeds])
  crashed = [tmp_path / "crashed" / f"seed{s}" for s in seeds]
  rj.train.train(cfg(0, 2), crashed[0])  # alone: a group of one
  regrouped = rj.train.train_packed([cfg(s, 4) for s in seeds], crashed)
  starts = [[r["step"] for r in Workdir(d).read_sessions() if r["event"] == "start"] for d in crashed]
  assert starts == [[0, 2], [0], [0]]
  for p, r in zip(packed, regrouped):
    assert p.step == r.step == 4
    for x, y in zip(_state_leaves(p), _state_leaves(r), strict=True):
      np.testing.assert_array_equal(x, y)


CRASH_IN_A_PACKED_SAVE = r'''
import os, signal, sys, time
from resnet_jax import cli
from resnet_jax.storage import checkpoints
from resnet_jax.storage.workdir import Workdir
save = checkpoints.Checkpointer.save
def save_then_die(self, step, *args, **kwargs):
  """`kill -9` once seed 0 has saved step 4, before seeds 1 and 2 save it."""
  if step == 4 and self.directory.parent.name == "seed1":
    deadline = time.time() + 240
    while 4 not in Workdir(self.directory.parent.parent / "seed0").saved_steps():
      assert time.time() < deadline
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
  return save(self, step, *args, **kwargs)
checkpoints.Checkpointer.save = save_then_die
sys.exit(cli.main(sys.argv[1:]))
'''


def test_a_packed_run_killed_between_its_runs_saves_resumes_bit_for_bit(data_dir, tmp_path):
  """The CLI's `--seeds 0 1 2 --pack on`, `kill -9` when seed 0 has saved step 4 and seeds 1-2
  only step 2 (issue 37: 10 and 5): the rerun trains seed 0 alone and seeds 1-2 as a group of two, and every run ends
  with the bits of the uninterrupted packed run (on a CPU each run is its own program)."""
  fields = {**support.TINY_SPLITS, "data.data_dir": str(data_dir), "eval_batch_size": 25, "num_steps": 6,
            "checkpoint_every_steps": 2, "keep_best_checkpoints": 0}
  argv = lambda workdir: ["train", "--config", "cifar10_resnet20:smoke", f"--workdir={workdir}", "--seeds", "0", "1",
                          "2", "--pack", "on", *[f"--config.{k}={v}" for k, v in fields.items()]]
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
  crashed = subprocess.run([sys.executable, "-c", CRASH_IN_A_PACKED_SAVE, *argv(tmp_path / "crashed")], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300, check=False)
  assert crashed.returncode == -9, crashed.stderr[-3000:]
  assert [Workdir(tmp_path / "crashed" / f"seed{s}").saved_steps() for s in (0, 1, 2)] == [[2, 4], [2], [2]]
  assert cli.main(argv(tmp_path / "crashed")) == 0
  assert cli.main(argv(tmp_path / "straight")) == 0
  for seed in (0, 1, 2):
    resumed = rj.train.load_variables(tmp_path / "crashed" / f"seed{seed}")[1]
    straight = rj.train.load_variables(tmp_path / "straight" / f"seed{seed}")[1]
    for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
      np.testing.assert_array_equal(x, y)
  starts = [s["step"] for s in Workdir(tmp_path / "crashed" / "seed0").read_sessions() if s["event"] == "start"]
  assert starts == [0, 4]
