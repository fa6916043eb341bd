"""The training loop end to end on a tiny prepared CIFAR-10: checkpoints, resume, preemption, NaN."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import support

import resnet_jax.data as rjd
from resnet_jax import train as rt
from resnet_jax.storage import checkpoints as ckpt_lib
from resnet_jax.storage import records
from resnet_jax.storage.workdir import Workdir
from resnet_jax.storage.workdir import ConfigChangedError

ROOT = pathlib.Path(__file__).resolve().parents[1]


OVERRIDES = {"data.train_split": "train", "data.eval_split": "test", "eval_batch_size": 20}


def smoke_config(data_dir, **overrides):
  return support.smoke_config(data_dir, **{"eval_batch_size": 20, **overrides})


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.batch_stats, state.opt_state, state.step)))]


def _last_per_step(records, kind):
  out = {}
  for r in records:
    if r["kind"] == kind:
      out[r["step"]] = {k: r[k] for k in ("loss", "error", "learning_rate", "top5_error") if k in r}
  return out


def test_train_writes_metrics_checkpoints_and_resumes(data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = rt.train(smoke_config(data_dir, num_steps=12), workdir)
  assert result.step == 12 and not result.preempted
  records = Workdir(workdir).read_metrics()
  assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 12]
  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [10, 12] and evals[-1]["num_examples"] == 50
  assert {"loss", "error", "learning_rate", "images_per_sec", "epoch"} <= set(records[0])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "cifar_resnet20"
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [10, 12]

  # A longer run in the same workdir continues from step 12.
  more = rt.train(smoke_config(data_dir, num_steps=15), workdir)
  assert more.step == 15
  assert [r["step"] for r in Workdir(workdir).read_metrics() if r["kind"] == "train"][-1] == 15

  # Inference from the run: only params and BN statistics are restored, no optimiser needed.
  model, variables = rt.load_variables(workdir)
  assert set(variables) == {"params", "batch_stats"}
  for a, b in zip(jax.tree.leaves((variables["params"], variables["batch_stats"])),
                  jax.tree.leaves(jax.device_get((more.state.params, more.state.batch_stats))),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  logits = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 10)
  evals = {r["step"]: r["error"] for r in Workdir(workdir).read_metrics() if r["kind"] == "eval"}
  kept = ckpt_lib.Checkpointer(workdir / "checkpoints").manager.all_steps()
  best = min((e, s) for s, e in evals.items() if s in kept)[1]
  assert Workdir(workdir).best_checkpoint(ckpt_lib.Checkpointer(workdir / "checkpoints"))[0] == best
  assert rt.evaluate(workdir, step="best")["step"] == best
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .*saved steps"):
    rt.load_variables(workdir, step=7)

  # An unfinished save (Orbax's temporary directory) is never taken for a checkpoint; a reader
  # leaves it alone (a training process may be writing it); the next training run removes it
  # (test_reliability.py, kill -9 during a save).
  shutil.copytree(workdir / "checkpoints" / "15", workdir / "checkpoints" / "16.orbax-checkpoint-tmp-1")
  assert rt.evaluate(workdir)["step"] == 15
  assert (workdir / "checkpoints" / "16.orbax-checkpoint-tmp-1").exists()
  shutil.rmtree(workdir / "checkpoints" / "16.orbax-checkpoint-tmp-1")

  # A different network in the same workdir: a one-line error naming the field, from the config
  # the checkpoints record (config.json is a copy: without it, the same).
  for _ in range(2):
    with pytest.raises(ConfigChangedError, match=r"model.stage_widths: \[4, 8, 16\] -> \[4, 8, 32\]"):
      rt.train(smoke_config(data_dir, num_steps=20, **{"model.stage_widths": (4, 8, 32)}), workdir)
    (workdir / "config.json").unlink(missing_ok=True)
  with pytest.raises(ConfigChangedError, match="optimizer.momentum: 0.9 -> 0.0"):
    rt.train(smoke_config(data_dir, num_steps=20, **{"optimizer.momentum": 0.0}), workdir)
  # Restored into another network, the checkpoint's fingerprint names the field.
  with pytest.raises(rt.CheckpointMismatchError, match=r"model.stage_widths: checkpoint \[4, 8, 16\] vs "
                     r"config \[4, 8, 32\]"):
    rt.load_variables(workdir, config=smoke_config(data_dir, **{"model.stage_widths": (4, 8, 32)}))


def test_sigterm_saves_and_resume_is_bit_exact(data_dir, tmp_path):
  steps = 100
  overrides = {"num_steps": steps, "log_every_steps": 1, "checkpoint_every_steps": 7}
  straight = rt.train(smoke_config(data_dir, **overrides), tmp_path / "straight")

  workdir = tmp_path / "preempted"
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides, "data.data_dir": data_dir}.items()]
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  proc = subprocess.Popen(
      [sys.executable, "-m", "resnet_jax.cli", "train", "--config",
       str(ROOT / "configs" / "cifar10_resnet20.py:smoke"), "--workdir", str(workdir), *flags],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(r["kind"] == "train" and r["step"] >= 3 for r in Workdir(workdir).read_metrics()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  assert "preempted: saved step" in out, out
  saved = ckpt_lib.Checkpointer(workdir / "checkpoints").latest_step()
  assert 3 <= saved < steps

  resumed = rt.train(smoke_config(data_dir, **overrides), workdir)
  assert resumed.step == steps
  for a, b in zip(_leaves(straight.state), _leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(a, b)
  straight_records = Workdir(tmp_path / "straight").read_metrics()
  resumed_records = Workdir(workdir).read_metrics()
  for kind in ("train", "eval"):
    assert _last_per_step(straight_records, kind) == _last_per_step(resumed_records, kind)
  # The workdir's session history: started at 0, preempted at `saved`, resumed from it, finished.
  sessions = Workdir(workdir).read_sessions()
  assert [(r["event"], r["step"]) for r in sessions] == [
      ("start", 0), ("end", saved), ("start", saved), ("end", steps)]
  assert [r["reason"] for r in sessions if r["event"] == "end"] == ["preempted", "finished"]
  assert sessions[0]["resumed_from"] is None and sessions[2]["resumed_from"].endswith(f"/{saved}")
  assert sessions[3]["steps"] == steps - saved and sessions[3]["images_per_sec"] > 0


def test_nan_loss_stops_and_names_the_step_and_last_good_checkpoint(data_dir, tmp_path):
  config = smoke_config(data_dir, checkpoint_every_steps=1, **{"optimizer.learning_rate": 1e30})
  with pytest.raises(rt.NonFiniteLossError,
                     match=r"NaN/Inf at step 2; stopped. last good checkpoint: .*checkpoints/1 \(step 1\)"):
    rt.train(config, tmp_path / "nan")
  assert ckpt_lib.Checkpointer(tmp_path / "nan" / "checkpoints").latest_step() == 1


def test_keep_last_n_plus_best(tmp_path):
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2, keep_best=1, async_save=False)
  state = {"w": np.ones(3, np.float32)}
  for step, error in zip(range(1, 7), (50.0, 10.0, 40.0, 45.0, 48.0, 47.0)):
    ckpt.save(step, state, {"n": np.zeros((), np.int32)}, {"pos": step}, {"model": {}},
              {"error": error, "top5_error": 0.0})
  ckpt.wait()
  assert ckpt.manager.all_steps() == [2, 5, 6]
  assert Workdir(tmp_path).best_checkpoint(ckpt)[0] == 2
  ckpt.close()
  # The eval metrics are on disk: a new process finds the best checkpoint too.
  assert Workdir(tmp_path).best_checkpoint(ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2, keep_best=1))[0] == 2


@pytest.mark.slow
def test_loss_decreases_on_real_cifar10_subset(cifar10_source, tmp_path):
  rjd.prepare("cifar10", source=cifar10_source, data_dir=tmp_path / "tfds")
  config = smoke_config(tmp_path / "tfds", num_steps=80, log_every_steps=20,
                        **{"data.train_split": "train[:2560]", "data.eval_split": "test[:500]",
                           "schedule.boundaries": (1000,), "eval_batch_size": 100,
                           "model.stage_widths": (8, 16, 32), "model.stem_width": 8})
  rt.train(config, tmp_path / "run")
  records = Workdir(tmp_path / "run").read_metrics()
  losses = [r["loss"] for r in records if r["kind"] == "train"]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.15, losses
  assert [r for r in records if r["kind"] == "eval"][-1]["error"] < 85.0  # chance: 90%


def test_the_schedule_helpers():
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  assert [s for s in range(1, 13) if loop.itstime(s, 5, 12)] == [5, 10, 12]
  assert loop.next_due(0, (5, 4), 12) == 4 and loop.next_due(4, (5, 4), 12) == 5
  assert loop.next_due(10, (5, 100), 12) == 12
  # Extra lines 1, 2, 4, ... steps into a process, until its first record.
  assert loop.early_log_steps(0, 100, 64000) == (1, 2, 4, 8, 16, 32, 64)
  assert loop.early_log_steps(12987, 100, 64000) == (12988, 12989, 12991, 12995)
  assert loop.early_log_steps(0, 100, 6) == (1, 2, 4) and loop.early_log_steps(7, 1, 20) == ()


def test_rates_leave_out_the_first_steps_which_compile():
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  clock = iter([40.0, 41.0, 43.0])  # 30 s compiling and restoring before step 1 ends, then 1 s per step
  rate = loop.RateWindow(128, 1000, start_time=10.0, start_step=0, clock=lambda: next(clock))
  assert rate.measure(1) == (None, None) and rate.first_seconds == 30.0
  assert rate.measure(2) == (128.0, 998.0)
  assert rate.measure(4) == (128.0, 996.0)


def test_first_lines_come_after_the_first_steps(data_dir, tmp_path, capsys):
  """log_every_steps=100: lines at steps 1, 2, 4, 8 (printed, not recorded), then the record."""
  workdir = tmp_path / "first"
  rt.train(smoke_config(data_dir, num_steps=12, log_every_steps=100), workdir)
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ")]
  assert [l.split()[1] for l in lines] == ["1/12", "2/12", "4/12", "8/12", "12/12"]
  assert "| compiled, first step in " in lines[0] and "img/s | ETA" in lines[1]
  assert [r["step"] for r in Workdir(workdir).read_metrics() if r["kind"] == "train"] == [12]
  rt.train(smoke_config(data_dir, num_steps=20, log_every_steps=100), workdir)  # resumed at 12
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ")]
  assert [l.split()[1] for l in lines] == ["13/20", "14/20", "16/20", "20/20"]
  assert "compiled, first step in" in lines[0] and all("img/s | ETA" in l for l in lines[1:])


def _saved_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _evals(workdir):
  return {r["step"]: r for r in Workdir(workdir).read_metrics() if r["kind"] == "eval"}


def test_evaluations_do_not_save_checkpoints(data_dir, tmp_path):
  """10 steps per epoch, eval every epoch, checkpoints every 8 steps: saves at 8, 16, 24 only."""
  workdir = tmp_path / "cadence"
  rt.train(smoke_config(data_dir, num_steps=24, checkpoint_every_steps=8, keep_checkpoints=5,
                        keep_best_checkpoints=0), workdir)
  assert _saved_steps(workdir) == [8, 16, 24]
  assert sorted(_evals(workdir)) == [10, 20, 24]  # the epochs', and the final step's
  # With keep-best ranking, each checkpoint carries the evaluation of its own weights.
  ranked = tmp_path / "ranked"
  rt.train(smoke_config(data_dir, num_steps=24, checkpoint_every_steps=8, keep_checkpoints=5,
                        keep_best_checkpoints=1), ranked)
  assert _saved_steps(ranked) == [8, 16, 24]
  assert sorted(_evals(ranked)) == [8, 10, 16, 20, 24]
  checkpointer = ckpt_lib.Checkpointer(ranked / "checkpoints")
  for step in (8, 16, 24):
    assert checkpointer.eval_metrics(step)["error"] == _evals(ranked)[step]["error"]


def test_best_checkpoint_survives_a_resume(data_dir, tmp_path):
  workdir = tmp_path / "best"
  flags = dict(checkpoint_every_steps=4, keep_checkpoints=1, keep_best_checkpoints=1)
  rt.train(smoke_config(data_dir, num_steps=12, **flags), workdir)
  rt.train(smoke_config(data_dir, num_steps=24, **flags), workdir)  # resumed from step 12
  evals = _evals(workdir)
  best = min((evals[s]["error"], s) for s in range(4, 25, 4))[1]  # ties: the earliest
  assert Workdir(workdir).best_checkpoint(ckpt_lib.Checkpointer(workdir / "checkpoints"))[0] == best
  assert set(_saved_steps(workdir)) == {best, 24}
  assert rt.evaluate(workdir, step="best")["error"] == pytest.approx(evals[best]["error"])


def test_an_evaluation_read_after_later_steps_is_of_its_own_weights(data_dir, tmp_path):
  """The eval of step 10 is dispatched, steps 11-15 run (donating the state), then it is read:
  its numbers are those of the step-10 checkpoint evaluated on its own."""
  workdir = tmp_path / "overlap"
  rt.train(smoke_config(data_dir, num_steps=20, checkpoint_every_steps=10, keep_checkpoints=5,
                        keep_best_checkpoints=0), workdir)
  recorded = _evals(workdir)[10]
  alone = rt.evaluate(workdir, step=10)
  for key in ("error", "top5_error", "loss", "num_examples"):
    assert recorded[key] == pytest.approx(alone[key], rel=1e-6), key
