"""A workdir's path, its saves and its lock (issue 37, items 1-3): a path works end to end or is
refused in one line before anything runs; a save is never reported over an unreadable
checkpoint; one trainer per workdir, even when its `.lock` is removed. Each test is a row of the
the manual's "Failure behaviour" table (docs/failures.md).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import support

import resnet_jax as rj
from resnet_jax import cli
from resnet_jax import storage
from resnet_jax import train as rt
from resnet_jax.storage import lock as lock_lib
from resnet_jax.storage.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py:smoke")
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           RESNET_JAX_ALLOCATOR="system")  # no re-execution: the test is about the lock


def _fields(data_dir, **overrides):
  return {**support.TINY_SPLITS, "eval_batch_size": 25, "data.data_dir": str(data_dir), **overrides}


def _train_argv(workdir, data_dir, **overrides):
  return ["train", "--config", SMOKE, f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in _fields(data_dir, **overrides).items()]]


def _one_line(err: str) -> str:
  lines = [line for line in err.splitlines() if line.strip()]
  assert "Traceback" not in err and len(lines) == 1, err[-3000:]
  return lines[0]


# -- item 1 and 2: the characters of a workdir's path ---------------------------------------------

def test_spaces_percent_unicode_and_a_leading_dash_work_end_to_end(data_dir, tmp_path, capsys):
  """Train, resume, eval, load and a study, under a path holding every character class that works."""
  workdir = tmp_path / "%41 sp ünï😀" / "-run"
  assert cli.main(_train_argv(workdir, data_dir, num_steps=2)) == 0
  assert cli.main(_train_argv(workdir, data_dir, num_steps=3)) == 0
  assert f"resumed from {workdir / 'checkpoints' / '2'}" in capsys.readouterr().out
  assert cli.main(["eval", f"--workdir={workdir}", "--json"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
  assert rt.load_network(workdir).step == 3
  study = rj.compare(base=SMOKE, variants={"lr 0.05 %ü": {"optimizer.learning_rate": 0.05}}, seeds=(0,),
                     workdir=tmp_path / "-study", overrides=_fields(data_dir, num_steps=2))
  assert study.results()[0]["step"] == 2
  # argparse reads a separate value that starts with '-' as a flag: the line says how to give it.
  assert cli.main(["eval", "--workdir", "-run"]) == 2
  assert "--workdir=-run" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("name, shown", [
    ("run[seed=1]", "'[' ']'"), ("lr*", "'*'"), ("what?", "'?'"), ("back\\slash", "'\\\\'"), ("tab\there", "'\\t'")])
def test_a_path_the_checkpoint_libraries_misread_is_refused_before_anything_runs(data_dir, tmp_path, capsys, name,
                                                                               shown):
  workdir = tmp_path / name
  assert cli.main(_train_argv(workdir, data_dir, num_steps=2)) == 2
  line = _one_line(capsys.readouterr().err)
  assert line.startswith(f"resnet-jax train: error: workdir {str(workdir)!r} contains {shown}: ") and (
      "use another name, e.g." in line), line
  assert cli.main(["eval", f"--workdir={workdir}"]) == 2
  assert f"contains {shown}" in _one_line(capsys.readouterr().err)
  with pytest.raises(storage.WorkdirError, match="contains"):  # a study's variant name is part of a path
    rj.compare(base=SMOKE, variants={name: {}}, seeds=(0,), workdir=tmp_path / "study",
               overrides=_fields(data_dir, num_steps=2))
  with pytest.raises(storage.WorkdirError, match="contains"):
    rt.load_network(workdir)
  assert list(tmp_path.iterdir()) == []  # nothing was written


def test_a_save_that_ends_without_its_array_index_fails_and_the_next_run_trains_it_again(data_dir, tmp_path,
                                                                                      monkeypatch, capsys):
  """What a misread path did: Orbax finishes a save without merging its arrays' index. The run
  fails in one line naming that step (never "finished"), and the next run trains it again."""
  from orbax.checkpoint._src.serialization import ocdbt_utils  # pylint: disable=import-outside-toplevel
  merge = ocdbt_utils.merge_ocdbt_per_process_files

  async def skip_step_10(directory, *args, **kwargs):
    if "/10." not in str(directory):
      await merge(directory, *args, **kwargs)
  monkeypatch.setattr(ocdbt_utils, "merge_ocdbt_per_process_files", skip_step_10)
  workdir = tmp_path / "run"
  argv = _train_argv(workdir, data_dir, num_steps=10, checkpoint_every_steps=5)
  assert cli.main(argv) == 1
  captured = capsys.readouterr()
  line = _one_line(captured.err)
  assert "finished at step" not in captured.out
  assert line == (f"resnet-jax train: could not write the checkpoint of step 10 to {workdir / 'checkpoints'}: the save "
                  f"ended without {workdir / 'checkpoints' / '10' / 'state' / 'manifest.ocdbt'}, so the checkpoint is "
                  "unreadable; the earlier checkpoints are intact (steps [5]); free space or fix the directory, then "
                  "run the same command again to resume from the newest"), line
  monkeypatch.setattr(ocdbt_utils, "merge_ocdbt_per_process_files", merge)
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "moved it to" in out and "resuming from step 5" in out and "finished at step 10" in out
  assert Workdir(workdir).saved_steps() == [5, 10]


# -- item 3: one trainer per workdir, whatever happens to `.lock` ---------------------------------

def test_removing_the_lock_file_under_a_trainer_does_not_let_a_second_one_in(data_dir, tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen([sys.executable, "-m", "resnet_jax.cli",
                            *_train_argv(workdir, data_dir, num_steps=500, log_every_steps=1,
                                         checkpoint_every_steps=1000)],
                           cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not any(
        r["step"] >= 2 for r in Workdir(workdir).read_metrics(log=None)):
      time.sleep(0.05)
    (workdir / ".lock").unlink()
    with pytest.raises(storage.WorkdirBusyError, match=f"workdir {workdir} is in use by another training process"):
      rt.train(support.smoke_config(data_dir, num_steps=4), workdir)
  finally:
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=240)
  assert first.returncode == 0 and "preempted: saved step" in out, err[-3000:]
  steps = [r["step"] for r in Workdir(workdir).read_metrics() if r["kind"] == "train"]
  assert steps == sorted(set(steps))  # one writer: no record twice
  assert not (workdir / ".lock").exists()  # released: nothing left that invites deleting it


def test_where_the_workdir_cannot_be_locked_a_holder_whose_lock_file_was_removed_stops(tmp_path, monkeypatch):
  """A filesystem that cannot lock a directory (NFS): the `.lock` file's lock stands alone, so a
  second trainer gets in after `rm .lock`; the first stops before its next write."""
  monkeypatch.setattr(lock_lib, "_lock_directory", lambda workdir: None)
  workdir = Workdir(tmp_path / "run")
  first = workdir.lock()
  try:
    workdir.check_lock()  # still its own file: nothing to say
    (tmp_path / "run" / ".lock").unlink()
    second = lock_lib.Lock(workdir.path).acquire()
    with pytest.raises(storage.WorkdirBusyError, match=r"\.lock was removed or replaced while this process held "
                       "it.*stopped without saving a checkpoint"):
      first.check()
    second.release()
  finally:
    first.release()
