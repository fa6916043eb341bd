"""Process faults on documented paths (issue 37, item 5): signals, a dead peer, too few file
descriptors, a damaged step-metadata file. Each ends in the right line, no traceback, with
the work saved where it can be; each test is a row of the manual's "Failure behaviour" table (docs/failures.md).

The faults are real: signals sent to a real process (this one, while it trains, where its
output is all that is checked), a process killed with -9, a real `RLIMIT_NOFILE`.
"""
import json
import logging
import os
import pathlib
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import support

import resnet_jax as rj
from resnet_jax import train as rt
from resnet_jax.reproduce import main_guard
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import preemption

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py:smoke")
# No re-execution with jemalloc: these tests are about the process's faults, not its speed.
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           RESNET_JAX_ALLOCATOR="system", JAX_PLATFORMS="cpu")
DEADLINE_S = 240  # generous: the machine may be loaded; no test depends on its speed


def _fields(data_dir, **overrides):
  return {**support.TINY_SPLITS, "eval_batch_size": 25, "data.data_dir": str(data_dir), **overrides}


def _wait_for_step(workdir, step: int, proc) -> None:
  """Until `workdir`'s metrics record `step` (or the process ended)."""
  deadline = time.time() + DEADLINE_S
  while time.time() < deadline and proc.poll() is None:
    if any(r["step"] >= step for r in Workdir(workdir).read_metrics(log=None)):
      return
    time.sleep(0.02)


def _no_traceback(*outputs):
  for text in outputs:
    for noise in ("Traceback", "Exception ignored", "ERROR:", "WARNING:", "Check failure"):
      assert noise not in text, text[-3000:]


def _one_line(err: str) -> str:
  _no_traceback(err)
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


def _signal_at(workdir, step: int, signum: int) -> threading.Thread:
  """Sends `signum` to this process once `workdir`'s metrics record `step` (the training loop's
  handlers are then installed, and the run has far to go)."""
  def wait_and_send():
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
      if any(r["step"] >= step for r in Workdir(workdir).read_metrics(log=None)):
        os.kill(os.getpid(), signum)
        return
      time.sleep(0.02)
  thread = threading.Thread(target=wait_and_send, daemon=True)
  thread.start()
  return thread


def test_sighup_a_closed_terminal_saves_and_stops_like_sigterm(data_dir, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(preemption, "_is_terminal", lambda fd: False, raising=False)  # pytest's own terminal stays
  workdir = tmp_path / "run"
  _signal_at(workdir, 2, signal.SIGHUP)
  result = rt.train(support.smoke_config(data_dir, num_steps=500, log_every_steps=1, checkpoint_every_steps=1000),
                    workdir)
  saved = Workdir(workdir).saved_steps()
  assert result.stopped == "preempted" and saved == [result.step] and 2 <= result.step < 500
  lines = capsys.readouterr().out.splitlines()
  stopping = lines.index(f"hung up (SIGHUP: the terminal closed): stopping at step {saved[0]}, saving a "
                         "checkpoint...")
  assert lines[stopping + 1].startswith(f"hung up (SIGHUP: the terminal closed): saved step {saved[0]} to "), lines
  assert Workdir(workdir).read_sessions()[-1]["reason"] == "preempted"


def test_sigterm_to_an_experiment_script_saves_and_ends_in_one_line(data_dir, tmp_path, capsys):
  """`rj.compare` under an experiment script's `main_guard`: the run saves, no other starts,
  one line, exit 0 (it was a KeyboardInterrupt traceback, exit 130)."""
  workdir = tmp_path / "study"
  _signal_at(workdir / "a" / "seed0", 2, signal.SIGTERM)
  overrides = _fields(data_dir, num_steps=500, log_every_steps=1, checkpoint_every_steps=1000)
  with pytest.raises(SystemExit) as exit_info:
    main_guard(lambda: rj.compare(base=SMOKE, variants={"a": {}, "b": {}}, seeds=(0,), workdir=workdir,
                                  overrides=overrides, pack=False))
  captured = capsys.readouterr()
  assert exit_info.value.code == 0
  assert _one_line(captured.err) == ("preempted: the runs in training saved; run the same command again to continue "
                                     "the study")
  assert "preempted: saved step" in captured.out and Workdir(workdir / "a" / "seed0").saved_steps()
  assert not (workdir / "b").exists()  # no other run started


WORKER = r'''
import sys
from resnet_jax import cli
port, pid, data_dir, workdir = sys.argv[1:5]
sys.exit(cli.main(["train", "--config", "cifar10_resnet20:smoke", "--workdir", workdir,
                   "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", pid,
                   f"--config.data.data_dir={data_dir}", "--config.data.train_split=train",
                   "--config.data.eval_split=test", "--config.eval_batch_size=10", "--config.num_steps=5000",
                   "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000"]))
'''


@pytest.mark.multidevice
def test_a_peer_killed_with_9_ends_the_other_process_in_one_line_saying_how_to_resume(data_dir, tmp_path):
  """The survivor's collective fails: one line, exit 1, at once (it waited for JAX's heartbeat
  timeout, then aborted with 87 lines and exit 134). No save is due meanwhile: a peer lost
  during a save's barrier is still noticed only by JAX's heartbeat timeout, which aborts."""
  workdir, port = tmp_path / "run", support.free_port()
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(data_dir), str(workdir)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    _wait_for_step(workdir, 3, procs[0])
    procs[1].kill()
    out, err = procs[0].communicate(timeout=DEADLINE_S)
  finally:
    for proc in procs:
      proc.kill()
      proc.communicate()
  line = _one_line(err)
  assert procs[0].returncode == 1, err[-3000:]
  assert line.startswith("resnet-jax train: process 0 of 2 stopped: a computation across the job's processes "
                         "failed (") and line.endswith(
      "most likely because another process died; no checkpoint was written yet: start every process of the job "
      "again to resume"), line


def test_too_few_file_descriptors_is_one_line(data_dir, tmp_path):
  """`ulimit -n 16`: the save fails in one line naming the limit; no asyncio leftovers after it."""
  def limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
  argv = [sys.executable, "-m", "resnet_jax.cli", "train", "--config", SMOKE, f"--workdir={tmp_path / 'run'}",
          *[f"--config.{k}={v}" for k, v in _fields(data_dir, num_steps=2).items()]]
  proc = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=DEADLINE_S,
                        preexec_fn=limit, check=False)
  assert proc.returncode == 1
  assert "too many open files: this process may open 16 (ulimit -n); raise the limit" in _one_line(proc.stderr)


def test_a_truncated_step_metadata_file_resumes_without_an_error_line(data_dir, tmp_path, caplog):
  """`_CHECKPOINT_METADATA` (Orbax's timestamps) cut short: the run resumes from that step, bit
  for bit (the checksums check the content), and no "ERROR:absl" line is printed."""
  workdir = tmp_path / "run"
  rt.train(support.smoke_config(data_dir, num_steps=2), workdir)
  metadata = workdir / "checkpoints" / "2" / "_CHECKPOINT_METADATA"
  metadata.write_text(metadata.read_text()[:20])
  caplog.set_level(logging.INFO)
  result = rt.train(support.smoke_config(data_dir, num_steps=3), workdir)
  assert result.step == 3 and Workdir(workdir).read_sessions()[-2]["resumed_from"].endswith("checkpoints/2")
  errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert not errors, errors
  assert json.loads((workdir / "checkpoints" / "3" / "_CHECKPOINT_METADATA").read_text())
