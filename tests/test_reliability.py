"""Faults a trusted trainer must survive, and bad input it must name in one line.

Each test is a row of the manual's "Failure behaviour" table (docs/failures.md).
"""
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import support

import resnet_jax as rj
from resnet_jax import cli
from resnet_jax import storage
from resnet_jax import train as rt
from resnet_jax.data import testing as data_testing
from resnet_jax.storage import checkpoints as ckpt_lib
from resnet_jax.train import config as config_lib
from resnet_jax.storage import records
from resnet_jax.storage.workdir import Workdir
from resnet_jax.storage import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py:smoke")
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


OVERRIDES = {"data.train_split": "train", "data.eval_split": "test", "eval_batch_size": 25}


def smoke_config(data_dir, **overrides):
  return support.smoke_config(data_dir, **{"eval_batch_size": 25, **overrides})


def _flags(data_dir, **overrides):
  return [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": data_dir, **overrides}.items()]


def _cli_train(workdir, data_dir, **overrides):
  return subprocess.Popen([sys.executable, "-m", "resnet_jax.cli", "train", "--config", SMOKE,
                           "--workdir", str(workdir), *_flags(data_dir, **overrides)],
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _variables(state):
  return jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))


def _damage_arrays(step_dir: pathlib.Path) -> int:
  """Truncates the array data files of a checkpoint (what a crash of the disk leaves)."""
  damaged = 0
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and "/d/" in str(f) and f.stat().st_size > 64:
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 3])
      damaged += 1
  return damaged


def _one_line_error(err: str) -> str:
  lines = [line for line in err.strip().splitlines() if line.strip()]
  assert "Traceback" not in err, err[-3000:]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


# -- checkpoints -------------------------------------------------------------------------------

def test_unreadable_latest_checkpoint_falls_back_for_train_and_eval(data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  straight = rt.train(smoke_config(data_dir, num_steps=12), workdir)
  assert _steps(workdir) == [10, 12]
  assert _damage_arrays(workdir / "checkpoints" / "12") > 0

  # eval: one line naming the unreadable step, then the next older one is used.
  assert cli.main(["eval", "--workdir", str(workdir), "--json"]) == 0
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err
  assert f"checkpoint {workdir / 'checkpoints' / '12'} is unreadable (" in captured.err
  assert "using step 10, the newest readable checkpoint" in captured.err
  assert json.loads(captured.out.strip().splitlines()[-1])["step"] == 10
  # An explicitly requested unreadable step is an error, not a silent substitute.
  assert cli.main(["eval", "--workdir", str(workdir), "--step", "12"]) == 2
  assert "is unreadable" in _one_line_error(capsys.readouterr().err)

  # train: the unreadable step is moved aside (never deleted), training resumes from step 10
  # and reaches exactly the state of the uninterrupted run.
  resumed = rt.train(smoke_config(data_dir, num_steps=12), workdir)
  out = capsys.readouterr().out
  assert "is unreadable" in out and "resuming from step 10, the newest readable checkpoint" in out
  kept = list((workdir / workdir_lib.Workdir.UNREADABLE).iterdir())
  assert len(kept) == 1 and kept[0].name.startswith("12-") and (kept[0] / "state").is_dir()
  assert _steps(workdir) == [10, 12]
  for a, b in zip(_variables(straight.state), _variables(resumed.state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_is_one_line(data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  rt.train(smoke_config(data_dir, num_steps=10, keep_checkpoints=1, keep_best_checkpoints=0), workdir)
  assert _steps(workdir) == [10]
  _damage_arrays(workdir / "checkpoints" / "10")
  assert cli.main(["eval", "--workdir", str(workdir)]) == 2
  assert "no checkpoint in" in capsys.readouterr().err


def test_finished_run_reports_its_final_evaluation_when_run_again(data_dir, tmp_path):
  workdir = tmp_path / "run"
  first = rt.train(smoke_config(data_dir, num_steps=10), workdir)
  again = rt.train(smoke_config(data_dir, num_steps=10), workdir)
  assert again.step == 10 and again.eval == first.eval
  assert again.train["loss"] == pytest.approx(first.train["loss"])
  # A checkpoint saved without its evaluation (older versions) is evaluated again.
  manager = ckpt_lib.Checkpointer(workdir / "checkpoints")
  metrics_file = workdir / "checkpoints" / "10" / "metrics" / "metrics"
  manager.close()
  assert metrics_file.is_file()
  metrics_file.unlink()
  third = rt.train(smoke_config(data_dir, num_steps=10), workdir)
  assert third.eval["error"] == pytest.approx(first.eval["error"])
  assert third.eval["num_examples"] == 50


def test_study_whose_run_died_before_its_result_reports_it(data_dir, tmp_path):
  overrides = {**OVERRIDES, "data.data_dir": str(data_dir), "num_steps": 4}
  study = rj.compare(base=SMOKE, variants={"a": {}}, seeds=(0,), workdir=tmp_path, overrides=overrides,
                     run=False)
  run = study.runs[0]
  rt.train(study.config_for(run), run.workdir)  # trained, then "died" before result.json
  assert not run.finished
  study.run()
  summary = study.summary()
  assert summary["a"]["runs"] == 1 and 0.0 <= summary["a"]["mean"] <= 100.0


def test_study_refuses_changed_settings_unless_asked_to_rerun(data_dir, tmp_path):
  base = {**OVERRIDES, "data.data_dir": str(data_dir), "num_steps": 4}
  rj.compare(base=SMOKE, variants={"a": {}}, seeds=(0,), workdir=tmp_path, overrides=base)
  with pytest.raises(storage.ConfigChangedError,
                     match=r"num_steps: 4 -> 6; optimizer.learning_rate: 0.1 -> 0.01"):
    rj.compare(base=SMOKE, variants={"a": {}}, seeds=(0,), workdir=tmp_path,
               overrides={**base, "num_steps": 6, "optimizer.learning_rate": 0.01})
  # The same settings (and a different data location) are the same study.
  same = rj.compare(base=SMOKE, variants={"a": {}}, seeds=(0,), workdir=tmp_path,
                    overrides={**base, "data.num_threads": 2})
  assert same.results()[0]["step"] == 4
  redone = rj.compare(base=SMOKE, variants={"a": {}}, seeds=(0,), workdir=tmp_path,
                      overrides={**base, "num_steps": 6}, on_change="rerun")
  assert redone.results()[0]["step"] == 6
  assert len(list((tmp_path / "a").glob("seed0.replaced-*"))) == 1


@pytest.mark.parametrize("field, value, shown", [
    ("optimizer.momentum", 0.5, "optimizer.momentum: 0.9 -> 0.5"),
    ("schedule.boundaries", (8, 15), "schedule.boundaries: [10, 15] -> [8, 15]"),
    ("global_batch_size", 16, "global_batch_size: 32 -> 16"),
    ("bn.mode", "global", "bn.mode: 'ghost' -> 'global'"),
])
def test_resume_with_a_changed_recipe_is_refused(data_dir, tmp_path, field, value, shown):
  workdir = tmp_path / "run"
  rt.train(smoke_config(data_dir, num_steps=5, checkpoint_every_steps=5), workdir)
  with pytest.raises(workdir_lib.ConfigChangedError) as info:
    rt.train(smoke_config(data_dir, num_steps=10, **{field: value}), workdir)
  message = str(info.value)
  assert shown in message and "--config.init_from=" in message and "\n" not in message


def test_operational_changes_and_longer_step_schedules_resume(data_dir, tmp_path):
  workdir = tmp_path / "run"
  rt.train(smoke_config(data_dir, num_steps=5, checkpoint_every_steps=5), workdir)
  more = rt.train(smoke_config(data_dir, num_steps=7, log_every_steps=1, **{"data.num_threads": 2}), workdir)
  assert more.step == 7
  with pytest.raises(workdir_lib.ConfigChangedError, match="num_steps: 7 -> 9"):  # cosine depends on it
    rt.train(smoke_config(data_dir, num_steps=9, **{"schedule.name": "cosine"}), workdir)


def test_init_from_starts_a_new_run_from_another_runs_weights(data_dir, tmp_path, capsys):
  rt.train(smoke_config(data_dir, num_steps=5, checkpoint_every_steps=5), tmp_path / "a")
  model, variables = rt.load_variables(tmp_path / "a")
  capsys.readouterr()
  config = smoke_config(data_dir, num_steps=1, init_from=f"{tmp_path / 'a'}:5",
                        **{"optimizer.learning_rate": 1e-9, "optimizer.weight_decay": 0.0})
  out = rt.train(config, tmp_path / "b")
  assert f"initialised params and BatchNorm statistics from {tmp_path / 'a'} (5)" in capsys.readouterr().out
  # One step at lr 1e-9 leaves the weights where the source run left them.
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(jax.device_get(out.state.params)),
                  strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  del model
  with pytest.raises(config_lib.ConfigError, match="is not the --workdir of a `resnet-jax train` run"):
    rt.train(smoke_config(data_dir, init_from=str(tmp_path / "nothing")), tmp_path / "c")


def test_kill_9_during_an_async_save_resumes_from_the_newest_complete_checkpoint(data_dir, tmp_path):
  """The process dies while Orbax writes step 10 in the background: its temporary directory
  is left behind; the next run resumes from step 5 and removes it."""
  workdir = tmp_path / "run"
  script = textwrap.dedent(f"""
      import asyncio, os, pathlib, signal, sys, time
      sys.path.insert(0, {str(ROOT / 'tests')!r})
      from orbax.checkpoint._src.path import atomicity
      from resnet_jax.storage import checkpoints as ckpt_lib
      from test_reliability import smoke_config
      from resnet_jax import train as rt
      rename = atomicity.AtomicRenameTemporaryPath.finalize
      async def slow_rename(self, *args, **kwargs):  # Orbax's commit of step 10 is still pending
        if self.get_final().name == "10":
          await asyncio.sleep(120)
        return await rename(self, *args, **kwargs)
      atomicity.AtomicRenameTemporaryPath.finalize = slow_rename
      original = ckpt_lib.Checkpointer.save
      def save(self, step, *args, **kwargs):
        started = original(self, step, *args, **kwargs)
        if step == 10:
          time.sleep(0.5)  # the background thread writes step 10's files into the temporary directory
          tmp = [p.name for p in self.directory.iterdir() if "tmp" in p.name]
          print("TMP", tmp, flush=True)
          os.kill(os.getpid(), signal.SIGKILL)
        self.wait()
        return started
      ckpt_lib.Checkpointer.save = save
      rt.train(smoke_config({str(data_dir)!r}, num_steps=12, checkpoint_every_steps=5,
                            keep_best_checkpoints=0), {str(workdir)!r})
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  tmp_line = [line for line in proc.stdout.splitlines() if line.startswith("TMP")]
  assert tmp_line and "tmp" in tmp_line[0], proc.stdout  # killed while step 10 was being written
  assert _steps(workdir) == [5]
  resumed = rt.train(smoke_config(data_dir, num_steps=12, checkpoint_every_steps=5, keep_best_checkpoints=0),
                     workdir)
  assert resumed.step == 12
  assert _steps(workdir) == [5, 10, 12]
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
  sessions = Workdir(workdir).read_sessions()
  assert [r["event"] for r in sessions] == ["start", "start", "end"]  # the killed one never ended
  assert sessions[1]["step"] == 5


def test_disk_full_during_a_save_is_one_line_and_keeps_earlier_checkpoints(data_dir, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 10:
      raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "10.orbax-checkpoint-tmp"))
    return original(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  code = cli.main(["train", "--config", SMOKE, "--workdir", str(workdir),
                   *_flags(data_dir, num_steps=12, checkpoint_every_steps=5)])
  assert code == 1
  line = _one_line_error(capsys.readouterr().err)
  assert f"could not write the checkpoint of step 10 to {workdir / 'checkpoints'}: no space left on device" in line
  assert "the earlier checkpoints are intact (steps [5])" in line
  monkeypatch.setattr(ocp.CheckpointManager, "save", original)
  assert _steps(workdir) == [5]
  model, variables = rt.load_variables(workdir)  # the earlier checkpoint still restores
  assert variables["params"]


def test_two_processes_on_one_workdir_the_second_refuses(data_dir, tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from resnet_jax.storage import Workdir
      Workdir({str(workdir)!r}).lock(); print("locked", flush=True); time.sleep(300)
  """)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(storage.WorkdirBusyError,
                       match=rf"workdir {workdir} is in use by another training process \(pid {holder.pid} on "):
      rt.train(smoke_config(data_dir, num_steps=2), workdir)
    assert not (workdir / "checkpoints").exists()
  finally:
    holder.kill()  # kill -9 releases the lock with the process
    holder.wait()
  assert rt.train(smoke_config(data_dir, num_steps=2), workdir).step == 2


def test_sigint_saves_a_checkpoint_then_stops_like_sigterm(data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = _cli_train(workdir, data_dir, num_steps=500, log_every_steps=1, checkpoint_every_steps=1000)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(r["kind"] == "train" and r["step"] >= 2 for r in Workdir(workdir).read_metrics()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  assert "Traceback" not in err, (out, err)
  saved = _steps(workdir)
  assert len(saved) == 1 and 2 <= saved[0] < 500
  # Said at once (the save waits for the steps in flight: it was 21 s of silence), then done.
  lines = out.splitlines()
  stopping = lines.index(f"interrupted (Ctrl-C): stopping at step {saved[0]}, saving a checkpoint...")
  assert lines[stopping + 1].startswith(f"interrupted (Ctrl-C): saved step {saved[0]} to "), out
  assert Workdir(workdir).read_sessions()[-1]["reason"] == "interrupted"  # the user's, not a preemption


def test_workdir_of_another_format_is_refused(data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lib.Workdir.FORMAT).write_text(json.dumps({"format": 99, "resnet_jax": "9.0.0"}))
  code = cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), *_flags(data_dir, num_steps=2)])
  assert code == 2
  line = _one_line_error(capsys.readouterr().err)
  assert "was written by resnet_jax 9.0.0 in workdir format 99" in line and "format 1" in line
  # A new workdir is stamped with this version's format.
  rt.train(smoke_config(data_dir, num_steps=2), tmp_path / "new")
  assert json.loads((tmp_path / "new" / workdir_lib.Workdir.FORMAT).read_text())["format"] == workdir_lib.FORMAT


# -- data --------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_dataset_shard_names_the_file_and_the_prepare_command(tmp_path, damage, capsys):
  tfds_dir = data_testing.prepare_cifar10(tmp_path, num_train_per_batch=16, num_test=20, seed=0)
  shard = next((tfds_dir / "cifar10").rglob("cifar10-train.array_record-*"))
  if damage == "truncate":
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
  else:
    shard.unlink()
  capsys.readouterr()  # TFDS's progress bars while preparing
  code = cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path / "run"),
                   *_flags(tfds_dir, num_steps=2)])
  assert code == 2
  line = _one_line_error(capsys.readouterr().err)
  assert str(shard) in line and f"resnet-jax prepare cifar10 --source DIR_OR_ARCHIVE --data-dir {tfds_dir}" in line


# -- bad values: every documented flag ---------------------------------------------------------

BAD_TRAIN_FLAGS = [
    ("--config.async_checkpoints=maybe", "async_checkpoints"),
    ("--config.bn.ghost_batch_size=5", "bn.ghost_batch_size=5"),
    ("--config.bn.mode=sync", "bn.mode='sync'"),
    ("--config.bn.unbiased_variance=maybe", "bn.unbiased_variance"),
    ("--config.checkpoint_every_steps=0", "checkpoint_every_steps=0"),
    ("--config.data.augment=maybe", "data.augment"),
    ("--config.data.data_dir=/nonexistent/tfds", "/nonexistent/tfds"),
    ("--config.data.eval_split=validation", "'validation'"),
    ("--config.data.image_size=0", "image_size=0 for cifar10"),
    ("--config.data.name=mnist", "'mnist'"),
    ("--config.data.normalization=zca", "data.normalization='zca'"),
    ("--config.data.num_threads=-1", "data.num_threads=-1"),
    ("--config.data.num_workers=-1", "data.num_workers=-1"),
    ("--config.data.padding=-1", "data.padding=-1"),
    ("--config.data.placement=gpu", "'gpu'"),
    ("--config.data.prefetch_batches=-1", "data.prefetch_batches=-1"),
    ("--config.data.train_split=train[:abc]", "'train[:abc]'"),
    ("--config.dtype=float16", "dtype='float16'"),
    ("--config.dtype=int8", "dtype='int8'"),
    ("--config.eval_batch_size=0", "eval_batch_size=0"),
    ("--config.eval_every_epochs=0", "eval_every_epochs=0"),
    ("--config.global_batch_size=0", "global_batch_size=0"),
    ("--config.init_from=/nonexistent/run", "init_from='/nonexistent/run'"),
    ("--config.keep_best_checkpoints=-1", "keep_best_checkpoints=-1"),
    ("--config.keep_checkpoints=0", "keep_checkpoints=0"),
    ("--config.label_smoothing=1.5", "label_smoothing=1.5"),
    ("--config.log_every_steps=0", "log_every_steps=0"),
    ("--config.model.name=resnet21", "'resnet21'"),
    ("--config.model.stage_sizes=(1, 0, 1)", "stage_sizes"),
    ("--config.model.stage_widths=(4, 8)", "stage_widths"),
    ("--config.model.stem_width=0", "stem_width=0"),
    ("--config.model.shortcut=dropout --config.model.shortcut_options.rate=1.5", "shortcut option rate=1.5"),
    ("--config.model.shortcut=scale --config.model.shortcut_options.scale=half", "scale='half'"),
    ("--config.model.shortcut_options.scale=0.3", "'scale' does not apply to shortcut='A'"),
    ("--config.model.shortcut=identity", "'identity'"),
    ("--config.model.num_classes=100", "model.num_classes cannot be set"),
    ("--config.num_epochs=3", "exactly one of num_steps"),
    ("--config.num_steps=many", "num_steps"),
    ("--config.optimizer.learning_rate=-1", "optimizer.learning_rate=-1"),
    ("--config.optimizer.momentum=1.5", "optimizer.momentum=1.5"),
    ("--config.optimizer.nesterov=maybe", "optimizer.nesterov"),
    ("--config.optimizer.weight_decay=-1", "optimizer.weight_decay=-1"),
    ("--config.optimizer.weight_decay_exclude=(bias", "optimizer.weight_decay_exclude='(bias'"),
    ("--config.optimizer.weight_decay_mode=l1", "optimizer.weight_decay_mode='l1'"),
    ("--config.schedule.boundaries=abc", "schedule.boundaries"),
    ("--config.schedule.decay_factor=-1", "schedule.decay_factor=-1"),
    ("--config.schedule.name=linear", "schedule.name='linear'"),
    ("--config.schedule.reference_batch_size=-1", "schedule.reference_batch_size=-1"),
    ("--config.schedule.unit=hours", "schedule.unit='hours'"),
    ("--config.schedule.warmup_learning_rate=-1", "schedule.warmup_learning_rate=-1"),
    ("--config.schedule.warmup_length=-1", "schedule.warmup_length=-1"),
    ("--config.schedule.warmup_mode=cubic", "schedule.warmup_mode='cubic'"),
    ("--config.seed=abc", "seed"),
    ("--config.seed=18446744073709551616", "seed=18446744073709551616 must be in [0, 4294967295]"),
    ("--config.num_steps=-1 --config.num_epochs=0.001", "num_epochs=0.001 is 0 steps at 10 steps per epoch"),
    ("--config.steps_per_dispatch=0", "steps_per_dispatch=0"),
    ("--config.optimizer.learning_rat=0.05", "did you mean optimizer.learning_rate"),
    ("--config=cifar10_resnet21", "cifar10_resnet21"),
    ("--config=cifar10_resnet20:huge", "huge"),
    ("--num_processes=abc", "num_processes"),
    # issue 37: values that passed and failed later (NaN reports, OverflowErrors, an OOM kill)
    ("--config.optimizer.learning_rate=nan", "optimizer.learning_rate=nan must be a finite number in (0, inf)"),
    ("--config.optimizer.learning_rate=inf", "optimizer.learning_rate=inf must be a finite number in (0, inf)"),
    ("--config.optimizer.weight_decay=nan", "optimizer.weight_decay=nan must be a finite number in [0, inf)"),
    ("--config.num_steps=-1 --config.num_epochs=inf", "num_epochs=inf must be a finite number"),
    ("--config.schedule.warmup_length=inf", "schedule.warmup_length=inf must be a finite number in [0, inf)"),
    ("--config.schedule.decay_factor=nan", "schedule.decay_factor=nan must be a finite number in (0, inf)"),
    ("--config.num_steps=5000000000 --config.schedule.name=cosine", "num_steps=5000000000 must be at most 2,147,483,647"),
    ("--config.num_steps=-1 --config.num_epochs=1e9", "num_epochs=1000000000.0 is 10,000,000,000 steps"),
    ("--config.schedule.unit=epochs --config.schedule.warmup_length=1e9", "schedule.warmup_length=1000000000.0 (epochs)"),
    ("--config.schedule.boundaries=(1e12,)", "schedule.boundaries=1000000000000.0 (steps) is 1,000,000,000,000 steps"),
    ("--config.data.padding=100000", "data.padding=100000 must be at most 32"),
    ("--config.data.eval_split=test[500:10]", "data.eval_split='test[500:10]' selects no examples of cifar10"),
    # the modern recipes' fields (issue 34)
    ("--config.accumulation_steps=0", "accumulation_steps=0 must be a positive integer dividing global_batch_size"),
    ("--config.augmentation.cutmix_alpha=inf", "augmentation.cutmix_alpha=inf must be a finite number in [0, inf)"),
    ("--config.augmentation.magnitude=40", "augmentation.magnitude=40 must be a finite number in [0, 30]"),
    ("--config.augmentation.magnitude_std=-1", "augmentation.magnitude_std=-1.0 must be a finite number in [0, inf)"),
    ("--config.augmentation.mix_prob=1.5", "augmentation.mix_prob=1.5 must be a finite number in [0, 1]"),
    ("--config.augmentation.mixup_alpha=nan", "augmentation.mixup_alpha=nan must be a finite number in [0, inf)"),
    ("--config.augmentation.num_ops=-1", "augmentation.num_ops=-1 must be a positive integer"),
    ("--config.augmentation.policy=autoaugment", "augmentation.policy='autoaugment' is not one of"),
    ("--config.augmentation.random_erasing=2", "augmentation.random_erasing=2.0 must be a finite number in [0, 1]"),
    ("--config.augmentation.switch_prob=-0.1", "augmentation.switch_prob=-0.1 must be a finite number in [0, 1]"),
    ("--config.data.repeated_augmentation=0", "data.repeated_augmentation=0 must be a positive integer (1: off)"),
    ("--config.ema.decay=1.5", "ema.decay=1.5 must be a finite number in [0, 1)"),
    ("--config.ema.keep_best=maybe", "--config.ema.keep_best=maybe"),
    ("--config.ema.warmup=maybe", "--config.ema.warmup=maybe"),
    ("--config.ema.warmup_gamma=-1", "ema.warmup_gamma=-1.0 must be a finite number in (0, inf)"),
    ("--config.ema.warmup_power=nan", "ema.warmup_power=nan must be a finite number in (0, inf)"),
    ("--config.loss=hinge", "loss='hinge' is not one of ('cross_entropy', 'binary_cross_entropy')"),
    ("--config.optimizer.b1=1.0", "optimizer.b1=1.0 must be a finite number in [0, 1)"),
    ("--config.optimizer.b2=-0.5", "optimizer.b2=-0.5 must be a finite number in [0, 1)"),
    ("--config.optimizer.clip_grad_norm=-1", "optimizer.clip_grad_norm=-1.0 must be a finite number in [0, inf)"),
    ("--config.optimizer.eps=-1", "optimizer.eps=-1.0 must be a finite number in [0, inf)"),
    ("--config.optimizer.name=rmsprop", "optimizer.name='rmsprop' is not one of ('sgd', 'adamw', 'lamb', 'lars')"),
    ("--config.optimizer.trust_coefficient=-1", "optimizer.trust_coefficient=-1.0 must be a finite number in (0, inf)"),
    ("--config.schedule.end_learning_rate=-1", "schedule.end_learning_rate=-1.0 must be a finite number in [0, inf)"),
    ("--config.schedule.power=nan", "schedule.power=nan must be a finite number in (0, inf)"),
    # the laboratory's fields (issue 35)
    ("--config.optimizer.scaled_learning_rate_factor=nan",
     "optimizer.scaled_learning_rate_factor=nan must be a finite number in [0, inf)"),
    ("--config.optimizer.scaled_learning_rate_params=(bias",
     "optimizer.scaled_learning_rate_params='(bias' is not a regular expression"),
    ("--config.gradient_highway_every_steps=-5", "gradient_highway_every_steps=-5 must not be negative"),
]


def test_every_config_field_has_a_bad_value_test():
  tested = {flag.split("=", 1)[0][len("--config."):] for flags, _ in BAD_TRAIN_FLAGS for flag in flags.split()}
  fields = set(config_lib.dotted_keys(rj.configs.load("cifar10_resnet20")))
  assert fields - tested == set()


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS)
def test_bad_train_flag_is_one_line(data_dir, tmp_path, capsys, flags, message):
  argv = ["train", "--config", SMOKE, "--workdir", str(tmp_path / "run"),
          *_flags(data_dir, num_steps=2), *flags.split()]
  if flags.startswith("--config="):
    argv = ["train", flags, "--workdir", str(tmp_path / "run")]
  assert cli.main(argv) == 2
  line = _one_line_error(capsys.readouterr().err)
  assert line.startswith("resnet-jax train: error: ") and message in line, line
  assert not (tmp_path / "run" / "checkpoints").exists()


CONFIG_FILES = {  # a config given by path: each is loaded, or refused in one line
    "recipe.yaml": ("optimizer:\n  learning_rate: 0.1\n", "is not one resnet_jax reads: give a .py file"),
    "no_base.py": ("import ml_collections\ndef get_config(arg=None):\n  return ml_collections.ConfigDict("
                   "{'model': {'name': 'cifar_resnet20'}})\n", "lacks the config fields accumulation_steps, async_checkpoints,"),
    "raises.py": ("def get_config(arg=None):\n  raise KeyError('depth')\n", "get_config(None) raised KeyError: 'depth'"),
    "syntax.py": ("def get_config(arg=None)\n  pass\n", "cannot be loaded: SyntaxError: expected ':'"),
    "cut.json": ('{"model": {"name": "cifar', "is not readable JSON (JSONDecodeError: "),
    "list.json": ("[1]", "is not a resnet_jax config (a JSON list)"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_config_file_given_by_path_is_loaded_or_refused_in_one_line(tmp_path, capsys, name):
  content, message = CONFIG_FILES[name]
  (tmp_path / name).write_text(content)
  assert cli.main(["train", "--config", str(tmp_path / name), "--workdir", str(tmp_path / "run")]) == 2
  line = _one_line_error(capsys.readouterr().err)
  assert line.startswith("resnet-jax train: error: ") and message in line, line


def test_resuming_with_the_saved_config_as_the_refusal_advises_works(data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), *_flags(data_dir, num_steps=2)]) == 0
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(workdir),
                   *_flags(data_dir, num_steps=3, **{"optimizer.learning_rate": 0.05})]) == 2
  line = _one_line_error(capsys.readouterr().err)
  saved = line[line.index("Resume with the saved config (") + len("Resume with the saved config ("):line.index("), ")]
  assert saved == str(workdir / "config.json")
  assert cli.main(["train", "--config", saved, "--workdir", str(workdir), "--config.num_steps=3"]) == 0
  assert "finished at step 3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "--workdir", "/nonexistent/run"], "/nonexistent/run"),
    (["eval", "--workdir", "{run}", "--step", "abc"], "--step 'abc'"),
    (["eval", "--workdir", "{run}", "--step", "7"], "no checkpoint of step 7"),
    (["eval", "--workdir", "{run}", "--split", "validation"], "'validation'"),
    (["prepare", "mnist"], "mnist"),
    (["prepare", "cifar10", "--source", "/nonexistent/cifar", "--data-dir", "{tmp}/tfds"], "/nonexistent/cifar"),
    (["frobnicate"], "unknown command"),
])
def test_bad_eval_and_prepare_flags_are_one_line(data_dir, tmp_path_factory, capsys, argv, message):
  run = tmp_path_factory.getbasetemp() / "eval_run"
  if not (run / "checkpoints").exists():
    rt.train(smoke_config(data_dir, num_steps=2, checkpoint_every_steps=2), run)
    capsys.readouterr()
  tmp = tmp_path_factory.mktemp("bad")
  argv = [a.format(run=run, tmp=tmp) for a in argv]
  assert cli.main(argv) == 2
  line = _one_line_error(capsys.readouterr().err)
  assert message in line, line


def test_ctrl_c_before_training_starts_is_one_line(monkeypatch, capsys):
  def interrupted(argv):
    raise KeyboardInterrupt
  from resnet_jax.commands import train as train_command  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train_command, "main", interrupted)
  assert cli.main(["train", "--config", SMOKE, "--workdir", "/tmp/unused"]) == 130
  assert _one_line_error(capsys.readouterr().err) == "resnet-jax train: interrupted"
