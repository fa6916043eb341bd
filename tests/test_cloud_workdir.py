"""gs:// workdirs and data dirs against a real GCS API server on 127.0.0.1 (issue 26).

The server is fake-gcs-server (`gcs_emulator.py`), reached through the clients' emulator
settings; one server, one prepared dataset and one trained run are shared by the module.
"""
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import support

from resnet_jax import cli
from resnet_jax import storage
from resnet_jax import study as study_lib
from resnet_jax import train as rt
from resnet_jax.data import remote
from resnet_jax.data import testing as data_testing
from resnet_jax.storage import object_store
from resnet_jax.storage import checkpoints as ckpt_lib
from resnet_jax.storage import lease as lease_lib
from resnet_jax.storage import records
from resnet_jax.storage.workdir import Workdir
from resnet_jax.storage import files as files_lib
from gcs_emulator import GcsEmulator
from test_train_multiprocess import WORKER

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py:smoke")
BUCKET = "runs"
DATA = f"gs://{BUCKET}/tensorflow_datasets"
# The SIGTERM run: one record per step, a checkpoint every 7 (the preempted one in between).
STEPS = {"num_steps": 60, "log_every_steps": 1, "checkpoint_every_steps": 7}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  server = GcsEmulator()
  if server.start() is None:
    pytest.skip(f"no GCS API server on this machine: {server.why_not}")
  saved = dict(os.environ)
  os.environ.update(server.env)
  os.environ[remote.CACHE_ENV] = str(tmp_path_factory.mktemp("prepare_cache"))
  server.create_bucket(BUCKET)
  yield server
  server.stop()
  os.environ.clear()
  os.environ.update(saved)


def _config(**overrides):
  return support.smoke_config(DATA, **overrides)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.batch_stats, state.opt_state, state.step)))]


@pytest.fixture(scope="module")
def gs_data(gcs, tmp_path_factory):
  """The tiny CIFAR-10 prepared by `resnet-jax prepare` into gs://; reads then start from an
  empty local cache, so the training runs below read the dataset from the bucket."""
  source = data_testing.write_cifar10_binary(tmp_path_factory.mktemp("cifar_src"), num_train_per_batch=64,
                                             num_test=50, seed=0)
  code = cli.main(["prepare", "cifar10", "--source", str(source), "--data-dir", DATA, "--allow-partial"])
  assert code == 0
  os.environ[remote.CACHE_ENV] = str(tmp_path_factory.mktemp("read_cache"))
  return DATA


def test_prepare_writes_the_dataset_into_the_bucket(gs_data, capsys):
  files = {p.name for p in object_store.as_path(f"{gs_data}/cifar10/3.0.2").iterdir()}
  assert {"dataset_info.json", "cifar10-train.array_record-00000-of-00001",
          "cifar10-test.array_record-00000-of-00001"} <= files
  assert cli.main(["prepare", "cifar10", "--source", "/nonexistent", "--data-dir", gs_data]) == 0
  assert f"prepared cifar10 in {gs_data}/cifar10/3.0.2 (320 train, 50 test images)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def straight(gs_data):
  """The reference: the SIGTERM run's schedule trained without a stop, in a gs:// workdir."""
  workdir = f"gs://{BUCKET}/straight"
  return workdir, rt.train(_config(**STEPS), workdir)


def test_train_second_trainer_refused_sigterm_resume_bit_exact_then_eval_and_load(straight, gs_data, capsys):
  reference_dir, reference = straight
  workdir = f"gs://{BUCKET}/preempted"
  flags = [f"--config.{k}={v}" for k, v in {**support.TINY_SPLITS, **STEPS, "eval_batch_size": 20,
                                             "data.data_dir": gs_data}.items()]
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  proc = subprocess.Popen([sys.executable, "-m", "resnet_jax.cli", "train", "--config", SMOKE,
                           "--workdir", workdir, *flags],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if Workdir(workdir).read_metrics():  # the first record is written at once, later ones every few s
      break
    time.sleep(0.05)
  # A second trainer on the same workdir meanwhile: refused in one line naming the first.
  capsys.readouterr()
  second = cli.main(["train", "--config", SMOKE, "--workdir", workdir, *flags])
  refusal = capsys.readouterr().err.strip()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert second == 2 and len(refusal.splitlines()) == 1, refusal
  assert f"workdir {workdir} is in use by another training process (pid {proc.pid} on " in refusal
  assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
  assert "preempted: saved step" in out, out
  saved = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", create=False).latest_step()
  assert 1 <= saved < STEPS["num_steps"]
  assert not object_store.as_path(f"{workdir}/.lock").exists()  # the lease is released

  resumed = rt.train(_config(**STEPS), workdir)
  assert resumed.step == STEPS["num_steps"]
  for a, b in zip(_leaves(reference.state), _leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(a, b)
  # Every record once: the preempted session's up to its checkpoint, then the resumed one's.
  written = Workdir(workdir).read_metrics()
  assert [r["step"] for r in written if r["kind"] == "train"] == list(range(1, STEPS["num_steps"] + 1))
  reference_records = Workdir(reference_dir).read_metrics()
  for kind in ("train", "eval"):
    assert ({s: r.get("loss") for s, r in records.latest_per_step(written, kind).items()}
            == {s: r.get("loss") for s, r in records.latest_per_step(reference_records, kind).items()})
  sessions = Workdir(workdir).read_sessions()
  assert [(r["event"], r["step"]) for r in sessions] == [
      ("start", 0), ("end", saved), ("start", saved), ("end", STEPS["num_steps"])]
  tensorboard = list(object_store.as_path(f"{workdir}/tensorboard").iterdir())
  assert len(tensorboard) == 2 and all(p.stat().length > 0 for p in tensorboard)

  # eval (the CLI) and load_variables read the gs:// run.
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["step"] == STEPS["num_steps"] and result["num_examples"] == 50
  _, variables = rt.load_variables(workdir)
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(jax.device_get(resumed.state.params)),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  net = rt.load_network(workdir)  # with the preprocessing.json the run recorded in the bucket
  assert net.step == STEPS["num_steps"] and net(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 10)


@pytest.mark.multidevice
def test_two_processes_train_and_restore_one_gs_run(gs_data, tmp_path):
  """A pod in miniature: both processes read the gs:// dataset (each stages it on this host)
  and write their part of each checkpoint to the gs:// workdir; process 0 holds the lease."""
  port, workdir = support.free_port(), f"gs://{BUCKET}/two-processes"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  env[remote.CACHE_ENV] = str(tmp_path / "cache")  # empty: the two processes stage it at once
  env.pop("XLA_FLAGS", None)
  outs = support.run_processes([[sys.executable, "-c", WORKER, str(port), str(i), gs_data, workdir]
                                for i in range(2)], env, ROOT)
  assert sorted(o["process"] for o in outs) == [0, 1] and {o["processes"] for o in outs} == {2}
  assert all(o["step"] == 2 and o["restored_step"] == 2 and o["num_examples"] == 50 for o in outs)
  assert outs[0]["restored_error"] == outs[1]["restored_error"] == outs[0]["train_eval_error"]
  state = object_store.as_path(f"{workdir}/checkpoints/2/state")
  assert {p.name for p in state.iterdir() if p.name.startswith("ocdbt.process_")} == {
      "ocdbt.process_0", "ocdbt.process_1"}
  assert not object_store.as_path(f"{workdir}/.lock").exists()


def test_second_trainer_on_a_gs_workdir_is_refused_naming_the_holder(gs_data, capsys):
  workdir = f"gs://{BUCKET}/busy"
  with lease_lib.Lease(workdir):
    code = cli.main(["train", "--config", SMOKE, "--workdir", workdir,
                     *[f"--config.{k}={v}" for k, v in {**support.TINY_SPLITS, "data.data_dir": gs_data}.items()]])
    err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert f"workdir {workdir} is in use by another training process (pid {os.getpid()} on " in err
  assert not object_store.as_path(f"{workdir}/.lock").exists()


def test_a_stale_lease_is_taken_over_with_a_notice(straight, capsys):
  workdir = f"gs://{BUCKET}/stale"
  dead = {"host": "pod-worker-7", "pid": 4242, "started": "2026-01-01T00:00:00", "renewed": time.time() - 900,
          "lease_seconds": 120, "token": "dead"}
  assert object_store.write_object(f"{workdir}/.lock", json.dumps(dead).encode(), if_generation=0)
  capsys.readouterr()
  assert rt.train(_config(num_steps=2), workdir).step == 2
  lines = [line for line in capsys.readouterr().out.splitlines() if "lease" in line]
  assert len(lines) == 1 and lines[0].startswith(
      f"took over the lease of workdir {workdir} from pid 4242 on pod-worker-7, since 2026-01-01T00:00:00 "
      "(not renewed for 9"), lines


def test_the_lease_is_renewed_and_a_holder_that_lost_it_says_so(gcs):
  workdir = f"gs://{BUCKET}/renewed"
  logged = []
  holder = lease_lib.Lease(workdir, lease_seconds=0.4, log=logged.append).acquire()
  try:
    first, generation = object_store.read_object(holder.url)
    time.sleep(0.5)
    later, renewed_generation = object_store.read_object(holder.url)
    assert renewed_generation != generation
    assert json.loads(later)["renewed"] > json.loads(first)["renewed"]
    # A second process whose view of the holder is stale (older than the lease) takes it over;
    # the first learns it at its next renewal.
    time.sleep(0.2)
    object_store.write_object(holder.url, b'{"host": "other", "pid": 1}', if_generation=holder._generation)  # pylint: disable=protected-access
    time.sleep(0.3)
    assert holder.lost and "taken over by pid 1 on other" in logged[-1]
  finally:
    holder.release()
  assert object_store.read_object(holder.url)[0] == b'{"host": "other", "pid": 1}'  # not deleted by the loser


def test_a_lease_object_deleted_under_its_holder_is_written_again_or_stops_it_before_its_next_write(gcs):
  """`rm` of a gs:// `.lock` (issue 37): the holder writes it again at once when it looks (every
  CHECK_SECONDS, and before each checkpoint), so a second trainer is refused; one that created it
  first holds it, and the first stops before its next write."""
  workdir = f"gs://{BUCKET}/deleted-lease"
  logged = []
  holder = lease_lib.Lease(workdir, log=logged.append).acquire()
  try:
    object_store.as_path(holder.url).unlink()
    lease_lib.check(workdir)  # before a checkpoint: it is written again, and the holder goes on
    assert json.loads(object_store.read_object(holder.url)[0])["pid"] == os.getpid()
    assert logged == [f"the lease {holder.url} was deleted while this process held it; wrote it again"]
    with pytest.raises(storage.WorkdirBusyError, match="is in use by another training process"):
      lease_lib.Lease(workdir, log=logged.append).acquire()
    object_store.as_path(holder.url).unlink()
    second = lease_lib.Lease(workdir, log=logged.append).acquire()  # before the holder looked again
    holder.keep()  # what `check` does before the holder's next checkpoint (here `check` would find `second`)
    assert holder.lost.startswith(f"the lease {holder.url} was taken over by pid {os.getpid()} on ")
    second.release()
  finally:
    holder.release()


def test_compare_on_gs_resumes_finished_runs_and_moves_changed_ones_aside(gs_data, capsys):
  workdir = f"gs://{BUCKET}/study"
  variants = {"a": {}, "b": {"optimizer.momentum": 0.0}}
  overrides = {**support.TINY_SPLITS, "data.data_dir": gs_data, "num_steps": 2, "eval_batch_size": 20}
  study = study_lib.compare("cifar10_resnet20:smoke", variants, workdir=workdir, overrides=overrides, pack=False)
  assert [r.result()["step"] for r in study.runs] == [2, 2]
  figure = study.plot(f"{workdir}/figure.png")  # the experiments' figure, written into the bucket
  assert str(figure) == f"{workdir}/figure.png" and figure.read_bytes().startswith(b"\x89PNG")
  capsys.readouterr()
  study_lib.compare("cifar10_resnet20:smoke", variants, workdir=workdir, overrides=overrides, pack=False)
  assert capsys.readouterr().out.count("finished earlier: gs://runs/study/") == 2
  with pytest.raises(storage.ConfigChangedError, match=r"num_steps: 2 -> 3"):
    study_lib.compare("cifar10_resnet20:smoke", variants, workdir=workdir, overrides={**overrides, "num_steps": 3},
                      pack=False)
  again = study_lib.compare("cifar10_resnet20:smoke", {"a": {}}, workdir=workdir,
                            overrides={**overrides, "num_steps": 3}, pack=False, on_change="rerun")
  assert again.runs[0].result()["step"] == 3
  aside = [p for p in object_store.as_path(f"{workdir}/a").iterdir() if ".replaced-" in p.name]
  assert len(aside) == 1 and json.loads((aside[0] / "result.json").read_text())["step"] == 2


def test_a_dead_holder_on_this_host_is_taken_over_at_once(gcs):
  workdir = f"gs://{BUCKET}/same-host"
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  holder = {"host": platform.node(), "pid": gone.pid, "started": "2026-01-01T00:00:00", "renewed": time.time()}
  object_store.write_object(f"{workdir}/.lock", json.dumps(holder).encode(), if_generation=0)
  logged = []
  with lease_lib.Lease(workdir, log=logged.append):
    assert json.loads(object_store.read_object(f"{workdir}/.lock")[0])["pid"] == os.getpid()
  assert logged == [f"took over the lease of workdir {workdir} from pid {gone.pid} on {platform.node()}, "
                    "since 2026-01-01T00:00:00 (its process is gone)"]


def test_a_trainer_whose_lease_was_taken_over_stops_without_saving(gs_data, monkeypatch):
  monkeypatch.setattr(lease_lib, "LEASE_SECONDS", 0.4)  # renewed every 0.1 s
  workdir = f"gs://{BUCKET}/taken"
  url = f"{workdir}/.lock"

  def take_over():  # what a trainer on another host does once it judges the lease stale
    while True:
      content, generation = object_store.read_object(url)
      if content and json.loads(content)["pid"] == os.getpid() and object_store.write_object(
          url, json.dumps({"host": "pod-worker-3", "pid": 7, "started": "2026-01-01T00:00:00"}).encode(), if_generation=generation):
        return
      time.sleep(0.02)

  thief = threading.Thread(target=take_over, daemon=True)
  thief.start()
  with pytest.raises(lease_lib.WorkdirBusyError, match=rf"^the lease {url} was taken over by pid 7 on "
                     "pod-worker-3, since 2026-01-01T00:00:00; stopped without saving a checkpoint beside it$"):
    rt.train(_config(num_steps=400, checkpoint_every_steps=5, log_every_steps=100), workdir)
  thief.join(timeout=10)
  assert json.loads(object_store.read_object(url)[0])["pid"] == 7  # the new holder's lease stays
  assert not object_store.as_path(f"{workdir}/checkpoints/5").exists()


def test_jsonl_on_an_object_is_rewritten_whole_and_keeps_every_record_once(gcs):
  url = f"gs://{BUCKET}/jsonl/metrics.jsonl"
  object_store.as_path(url).write_bytes(b'{"step": 1}\n{"step": 2, "lo')  # a copy cut short
  logged = []
  appender = files_lib.files_for(url).open_jsonl(url, log=logged.append)
  appender.append({"step": 3})  # the first record is written at once
  appender.append({"step": 4})  # the next ones at most every OBJECT_REWRITE_SECONDS ...
  assert [r["step"] for r in files_lib.files_for(url).read_jsonl(url)] == [1, 3]
  appender.flush()  # ... or when flushed (before each checkpoint)
  assert [r["step"] for r in files_lib.files_for(url).read_jsonl(url, log=logged.append)] == [1, 3, 4]
  appender.close()
  files_lib.files_for(url).append_jsonl(url, {"step": 5})  # a resumed run continues the same records
  assert [r["step"] for r in files_lib.files_for(url).read_jsonl(url)] == [1, 3, 4, 5]
  assert logged == [f"{url}: its last line was cut short (a crash while writing it); it is kept, and new "
                    "records start on a fresh line",
                    f"{url}: skipped 1 line(s) that are not complete records, cut short by a crash (line 2)"]


SERVER_GOES_DOWN = r'''
import sys, types, asyncio
from gcsfs import retry
sleep = asyncio.sleep
retry.asyncio = types.SimpleNamespace(sleep=lambda seconds: sleep(0.01))  # gcsfs's backoff (~1 min), shortened
from resnet_jax import cli
sys.exit(cli.main(sys.argv[1:]))
'''


def test_a_storage_server_down_mid_run_is_the_right_line_only(data_dir, tmp_path):
  """The server stops answering while a gs:// run trains: the run ends with one line naming the
  server, and nothing of the clients' retries (gcsfs and aiohttp tracebacks) or of the
  clean-up that fails after it (it named the lease's deletion instead)."""
  server = GcsEmulator()
  if server.start() is None:
    pytest.skip(f"no GCS API server on this machine: {server.why_not}")
  server.create_bucket(BUCKET)
  env = dict(os.environ, **server.env, RESNET_JAX_ALLOCATOR="system", JAX_PLATFORMS="cpu",
             PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  fields = {**support.TINY_SPLITS, "data.data_dir": str(data_dir), "eval_batch_size": 25, "num_steps": 5000,
            "log_every_steps": 1, "checkpoint_every_steps": 5000}
  proc = subprocess.Popen([sys.executable, "-c", SERVER_GOES_DOWN, "train", "--config", SMOKE, "--workdir",
                           f"gs://{BUCKET}/down", *[f"--config.{k}={v}" for k, v in fields.items()]],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in proc.stdout:
      if line.startswith("step 2/"):
        break
  finally:
    server.stop()
  out, err = proc.communicate(timeout=300)
  err = "\n".join(line for line in err.splitlines() if "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in line)  # TensorStore's
  for noise in ("Traceback", "ERROR:", "Exception ignored", "Unclosed"):
    assert noise not in err + out, err[-3000:]
  lines = [line for line in err.splitlines() if line.strip()]
  assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
  assert lines[0].startswith(f"resnet-jax train: cannot ") and f"gs://{BUCKET}/down/" in lines[0] and (
      f"the storage server {server.url} does not answer" in lines[0]) and ".lock" not in lines[0], lines[0]


@pytest.mark.parametrize("status, advice", [
    (401, "no valid credentials: run `gcloud auth application-default login`"),
    (403, "permission denied: the account needs read and write access to objects of bucket runs"),
])
def test_refused_credentials_are_one_line_with_what_to_do(gcs, status, advice):
  # gcsfs's own exceptions for the statuses a real bucket answers (an emulator lets everyone in);
  # gcsfs is imported after `gcs` set the emulator's settings, which gcsfs reads at import
  from gcsfs import retry  # pylint: disable=import-outside-toplevel
  error = {401: retry.HttpError({"code": 401, "message": "Anonymous caller does not have storage.objects.list "
                                                        "access to the Google Cloud Storage bucket."}),
           403: OSError("Forbidden: b/runs/o\nsa@p.iam does not have storage.objects.create access")}[status]
  message = str(object_store.storage_error("gs://runs/r50", error, "write"))
  assert message.startswith(f"cannot write gs://runs/r50: {advice}") and "\n" not in message


@pytest.mark.parametrize("what", ["bucket", "server"])
def test_a_missing_bucket_or_a_server_down_is_one_line(gcs, data_dir, capsys, monkeypatch, what):
  if what == "server":
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{GcsEmulator().port}")  # nothing listens
    workdir, expected = f"gs://{BUCKET}/down", "does not answer"
  else:
    workdir, expected = "gs://no-such-bucket/run", "bucket gs://no-such-bucket does not exist"
  local_data = str(data_dir)
  for argv in (["train", "--config", SMOKE, "--workdir", workdir,
                *[f"--config.{k}={v}" for k, v in {**support.TINY_SPLITS, "data.data_dir": local_data}.items()]],
               ["eval", "--workdir", workdir],
               ["prepare", "cifar10", "--source", "/nonexistent", "--data-dir", workdir]):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and expected in err and workdir in err, (argv, err)
