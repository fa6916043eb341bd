"""Faults of the storage under a workdir, and of the files in it: each ends in one line, never
in a hang, a traceback or a silently different model (issue 24; the README's "Failure
behaviour" table names each test).

Full disks, exhausted inodes and read-only filesystems are real tmpfs mounts (`mounts`,
conftest.py: skipped with the reason where mounting is not permitted); bit flips are flips
of one bit in the files Orbax wrote.
"""
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import support

from resnet_jax import cli
from resnet_jax import train as rt
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import config as config_lib
from resnet_jax.train import load as load_lib
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import workdir as workdir_lib
from resnet_jax.train.session import TrainingSession

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py:smoke")
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
RUN = {"num_steps": 10, "checkpoint_every_steps": 5}  # checkpoints at steps 5 and 10
EXIT_TIMEOUT_S = 180  # a smoke run takes ~15 s; Orbax's threads used to hold a failed one for 300 s


def _config(data_dir, **overrides):
  return support.smoke_config(data_dir, **{**RUN, **overrides})


def _flags(data_dir, **overrides):
  fields = {**support.TINY_SPLITS, "eval_batch_size": 20, "data.data_dir": data_dir, **RUN, **overrides}
  return [f"--config.{k}={v}" for k, v in fields.items()]


def _train_argv(workdir, data_dir, **overrides):
  return ["train", "--config", SMOKE, "--workdir", str(workdir), *_flags(data_dir, **overrides)]


def _cli_subprocess(argv):
  """`resnet-jax ARGV` in its own process: (exit code, stdout, stderr, seconds)."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "resnet_jax.cli", *argv], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=EXIT_TIMEOUT_S)
  return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def _no_traceback(*outputs):
  for text in outputs:
    for noise in ("Traceback", "Exception ignored", "Event loop is closed", "ERROR:"):
      assert noise not in text, text[-3000:]


def _one_line(err: str, *other_outputs) -> str:
  _no_traceback(err, *other_outputs)
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_bit_exact(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
  """A finished 10-step run (checkpoints 5 and 10) and its final variables, never modified."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = rt.train(_config(data_dir), workdir)
  return workdir, result["state"], data_dir


def _copy(workdir, tmp_path) -> pathlib.Path:
  target = tmp_path / "copy"
  shutil.copytree(workdir, target)
  return target


# -- row 4: links where the workdir keeps files --------------------------------------------------

@pytest.mark.parametrize("name", [".lock", "config.json", "workdir.json", "metrics.jsonl", "sessions.jsonl"])
def test_a_link_in_place_of_a_workdir_file_is_refused_and_its_target_untouched(data_dir, tmp_path, capsys, name):
  victim = tmp_path / "victim.txt"
  victim.write_text("not yours\n")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / name).symlink_to(victim)
  assert cli.main(_train_argv(workdir, data_dir, num_steps=2)) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"{workdir / name} is a symbolic link (to {victim})" in line and "never reads or writes" in line, line
  assert victim.read_text() == "not yours\n" and (workdir / name).is_symlink()


@pytest.mark.parametrize("content", ['{"model": {"name": "cifar', "{}", "[1]"])
def test_a_damaged_config_json_is_one_line_naming_it_and_the_way_out(finished, tmp_path, capsys, content):
  copy = _copy(finished[0], tmp_path)
  path = copy / config_lib.CONFIG_FILE
  path.write_text(content)
  assert cli.main(["eval", "--workdir", str(copy)]) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"{path} " in line and "run `resnet-jax train` with the run's --config and --workdir" in line, line


# -- row 9: a metrics line cut short by a crash ------------------------------------------------------

def test_a_torn_metrics_line_is_skipped_and_reported_and_a_resume_starts_a_fresh_line(data_dir, finished, tmp_path,
                                                                                      capsys):
  copy = _copy(finished[0], tmp_path)
  metrics = copy / metrics_lib.METRICS_FILE
  complete = metrics.read_text()
  metrics.write_text(complete + '{"step": 11, "kind": "tr')  # the crash's partial record
  again = rt.train(_config(data_dir), copy)  # finished: reads its last records
  assert again["step"] == 10 and again["train"]["loss"] > 0
  out = capsys.readouterr().out
  assert "skipped 1 line(s) that are not complete records" in out and "its last line was cut short" in out
  resumed = rt.train(_config(data_dir, num_steps=15), copy)
  assert resumed["step"] == 15
  lines = metrics.read_text().splitlines()
  assert lines[len(complete.splitlines())] == '{"step": 11, "kind": "tr'  # kept, and alone on its line
  records = metrics_lib.read_metrics(copy, log=None)
  assert len(records) == len(lines) - 1 and records[-1]["step"] == 15


# -- row 10: a workdir that cannot be one ---------------------------------------------------------------

def test_a_workdir_that_is_a_file_or_has_a_directory_as_lock_is_one_line(data_dir, tmp_path, capsys):
  file = tmp_path / "a-file"
  file.write_text("")
  assert cli.main(_train_argv(file, data_dir, num_steps=2)) == 2
  assert f"--workdir {file} is a file, not a directory" in _one_line(capsys.readouterr().err)
  workdir = tmp_path / "run"
  (workdir / ".lock").mkdir(parents=True)
  assert cli.main(_train_argv(workdir, data_dir, num_steps=2)) == 2
  assert f"{workdir / '.lock'} is a directory, where the workdir keeps a regular file" in _one_line(
      capsys.readouterr().err)


def test_a_read_only_workdir_is_one_line(data_dir, tmp_path, mounts, capsys):
  workdir = mounts.tmpfs(tmp_path / "run", "size=1m")
  mounts.read_only(workdir)
  assert cli.main(_train_argv(workdir, data_dir, num_steps=2)) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"cannot create {workdir / '.lock'}: Read-only file system" in line, line
