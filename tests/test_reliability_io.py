"""Faults of the storage under a workdir, and of the files in it: each ends in one line, never
in a hang, a traceback or a silently different model (issue 24; the manual's "Failure
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
from resnet_jax.data import cifar
from resnet_jax.storage import checkpoints as ckpt_lib
from resnet_jax.train import config as config_lib
from resnet_jax.train import load as load_lib
from resnet_jax.storage import records
from resnet_jax.storage.workdir import Workdir
from resnet_jax.storage import workdir as workdir_lib
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
  return workdir, result.state, data_dir


def _copy(workdir, tmp_path) -> pathlib.Path:
  target = tmp_path / "copy"
  shutil.copytree(workdir, target)
  return target


# -- rows 1 and 5: a save that cannot be written ----------------------------------------------

@pytest.mark.timeout(2 * EXIT_TIMEOUT_S)
@pytest.mark.parametrize("fault", ["no inodes", "read-only"])
def test_a_checkpoint_folder_that_cannot_be_created_exits_1_at_once(data_dir, tmp_path, mounts, fault):
  """Orbax cannot create step 10's temporary folder: one line, exit 1, no thread left waiting."""
  workdir = tmp_path / "run"
  assert rt.train(_config(data_dir, num_steps=5), workdir).step == 5
  _, before = rt.load_variables(workdir)
  checkpoints = workdir / "checkpoints"
  if fault == "no inodes":  # a filesystem whose every inode is taken, holding a copy of step 5
    shutil.move(str(checkpoints), str(tmp_path / "saved"))
    mounts.tmpfs(checkpoints, "size=8m,nr_inodes=64")
    shutil.copytree(tmp_path / "saved", checkpoints, dirs_exist_ok=True)
    for i in range(64):
      try:
        (checkpoints / f"filler{i}").touch()
      except OSError:
        break
  else:
    mounts.read_only(checkpoints)
  code, out, err, seconds = _cli_subprocess(_train_argv(workdir, data_dir))
  line = _one_line(err, out)
  assert code == 1 and seconds < EXIT_TIMEOUT_S
  reason = "no space left on device" if fault == "no inodes" else "read-only file system"
  assert line.startswith(f"resnet-jax train: could not write the checkpoint of step 10 to {checkpoints}: {reason}")
  assert "the earlier checkpoints are intact (steps [5])" in line
  _, after = rt.load_variables(workdir)  # step 5, verified by its checksums
  _assert_bit_exact(before, after)


@pytest.mark.timeout(2 * EXIT_TIMEOUT_S)
def test_a_disk_that_fills_during_a_save_is_one_line_naming_that_step(data_dir, tmp_path, mounts):
  """700 KB hold about three checkpoints of the smoke network: the first save that does not fit
  is named (not the next one), nothing else is printed (no Orbax, asyncio or TensorBoard
  traceback at cleanup), and the saved ones restore."""
  workdir = mounts.tmpfs(tmp_path / "disk", "size=700k") / "run"
  code, out, err, _ = _cli_subprocess(_train_argv(workdir, data_dir, num_steps=60))
  line = _one_line(err, out)
  intact = _steps(workdir)
  assert code == 1 and intact and intact[-1] < 60, (intact, line)
  failed = intact[-1] + 5
  assert line == (f"resnet-jax train: could not write the checkpoint of step {failed} to {workdir / 'checkpoints'}: "
                  f"no space left on device; the earlier checkpoints are intact (steps {intact}); free space or "
                  "fix the directory, then run the same command again to resume from the newest")
  assert Workdir(workdir).read_sessions()[-1]["reason"].startswith("CheckpointWriteError")
  reference = tmp_path / "reference"  # the same run on a disk with room, to the same step
  rt.train(_config(data_dir, num_steps=intact[-1]), reference)
  _assert_bit_exact(rt.load_variables(reference)[1], rt.load_variables(workdir)[1])


# -- rows 2, 3, 6: bit flips in a checkpoint -----------------------------------------------------

def _flip_bit(path: pathlib.Path, position: int, bit: int = 0x04) -> None:
  data = bytearray(path.read_bytes())
  data[position] ^= bit
  path.write_bytes(bytes(data))


def _in_the_middle(select, bit=0x04):
  def flip(step_dir):
    path = select(step_dir)
    _flip_bit(path, path.stat().st_size // 2, bit)
  return flip


def _in_the_first_digit_of(select, key: bytes, bit: int):
  """Flips a bit of a number's first digit ("step": 10 -> 90, with 0x08): still JSON."""
  def flip(step_dir):
    path = select(step_dir)
    _flip_bit(path, path.read_bytes().index(b'"%s": ' % key) + len(key) + 4, bit)
  return flip


def _raw_params(state_dir: pathlib.Path):
  """The params as Orbax alone reads them back (no checksums)."""
  return _leaves(ocp.PyTreeCheckpointer().restore(state_dir)["train"]["params"])


def _in_the_arrays_so_that_orbax_reads_other_params(step_dir):
  """Flips one bit of an array data file where Orbax alone reads the params back without an
  error, as other values (where the arrays lie in the files varies from save to save)."""
  reference = _raw_params(step_dir / "state")
  data_files = sorted((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda f: -f.stat().st_size)
  for trial, (path, position) in enumerate((f, f.stat().st_size * k // 16) for f in data_files for k in range(4, 16)):
    state = step_dir.parent / f"trial{trial}"  # a fresh path: TensorStore caches what it read
    shutil.copytree(step_dir / "state", state)
    _flip_bit(state / path.relative_to(step_dir / "state"), position)
    try:
      changed = any(not np.array_equal(a, b) for a, b in zip(reference, _raw_params(state), strict=True))
    except Exception:  # pylint: disable=broad-except  (a flip Orbax notices)
      changed = False
    shutil.rmtree(state)
    if changed:
      _flip_bit(path, position)
      return
  raise AssertionError(f"no bit of {step_dir} was read back silently by Orbax")


def _data_file(step_dir):
  return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda f: f.stat().st_size)


# One bit flipped in each kind of file of a checkpoint.
FLIPS = {
    "array data": _in_the_middle(_data_file),
    "array data, read back silently": _in_the_arrays_so_that_orbax_reads_other_params,
    "array index": _in_the_middle(lambda d: d / "state" / "ocdbt.process_0" / "manifest.ocdbt"),
    "state manifest": _in_the_middle(lambda d: d / "state" / "manifest.ocdbt"),
    "state tree metadata": _in_the_middle(lambda d: d / "state" / "_METADATA"),
    "shardings": _in_the_middle(lambda d: d / "state" / "_sharding"),
    "array metadata": _in_the_middle(lambda d: d / "state" / "array_metadatas" / "process_0"),
    "data-iterator position": _in_the_first_digit_of(lambda d: d / "data" / "metadata", b"step", 0x08),
    "meta (fingerprint, config, checksums)": _in_the_middle(lambda d: d / "meta" / "metadata", 0x01),
    "eval metrics": _in_the_first_digit_of(lambda d: d / "metrics" / "metrics", b"num_examples", 0x01),  # 50 -> 40
    "eval metrics, no longer JSON": _in_the_first_digit_of(lambda d: d / "metrics" / "metrics", b"num_examples", 0x08),
    "checkpoint metadata": _in_the_middle(lambda d: d / "_CHECKPOINT_METADATA"),
    "commit marker": _in_the_middle(lambda d: d / "commit_success.txt"),
}
# Flips that Orbax itself reads back without an error: only the checksums catch them.
SILENT = ("array data, read back silently", "data-iterator position")


def _restore_like_a_resumed_run(exp, workdir):
  """(step, state, data position, eval metrics, printed lines): what `train` starts from."""
  console = io.StringIO()
  with TrainingSession(exp, workdir) as session:
    session.writer.console = console
    train_iter = exp.pipeline.train_iterator()
    progress = session.restore_or_initialize(train_iter)
    eval_metrics = session.checkpointer.eval_metrics(progress.step)
    session.finish()
  return progress.step, progress.state, train_iter.get_state(), eval_metrics, console.getvalue()


@pytest.fixture(scope="module")
def step5(finished, tmp_path_factory):
  """(state, variables, data position) at step 5 (from a copy without step 10): a fall back's result."""
  workdir = tmp_path_factory.mktemp("step5") / "run"
  shutil.copytree(finished[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / "10")
  _, variables = rt.load_variables(workdir)
  step, state, data, _, _ = _restore_like_a_resumed_run(rt.build.experiment(_config(finished[2])), workdir)
  assert step == 5
  return state, variables, data


@pytest.mark.parametrize("kind", sorted(FLIPS))
def test_a_bit_flip_in_any_file_of_a_checkpoint_is_caught_or_harmless(data_dir, finished, step5, tmp_path, capsys,
                                                                      kind):
  """Never a silently different model: each reader of the newest checkpoint (a resumed run, a
  finished run's report, `eval`/`load_variables`) gets it exactly as saved, or reports it
  unreadable and uses step 5 (a resumed run sets it aside and trains steps 6-10 again)."""
  workdir, final_state, _ = finished
  copy = _copy(workdir, tmp_path)
  FLIPS[kind](copy / "checkpoints" / "10")
  saved_metrics = ckpt_lib.Checkpointer(workdir / "checkpoints", create=False).eval_metrics(10)

  _, variables, found = load_lib.restore_variables(copy, log=print)  # what eval restores
  expected_variables = ({"params": final_state.params, "batch_stats": final_state.batch_stats} if found == 10
                        else step5[1])
  _assert_bit_exact(variables, expected_variables)

  step, state, data, eval_metrics, out = _restore_like_a_resumed_run(rt.build.experiment(_config(data_dir)), copy)
  out += capsys.readouterr().out
  _no_traceback(out)
  if step == 10:
    _assert_bit_exact(state, final_state)
    assert data["step"] == 10 and eval_metrics in ({}, saved_metrics)  # changed metrics are dropped, never shown
  else:
    assert step == 5 and "checkpoints/10 is unreadable (" in out and "moved it to" in out, out
    _assert_bit_exact(state, step5[0])
    assert data == step5[2]
  if kind in SILENT:
    assert step == 5 and "does not match the checksum recorded when it was saved" in out, out
  if kind == "array data, read back silently":
    assert found == 5, out  # eval too: the flipped bit is in the params
  if kind.startswith("eval metrics"):
    assert step == 10 and eval_metrics == {} and saved_metrics, out


def test_eval_falls_back_from_damaged_arrays_in_two_lines_without_tracebacks(finished, tmp_path):
  """`resnet-jax eval` in its own process (TensorStore's leftovers of a failed read used to print
  dozens of "Event loop is closed" tracebacks): the unreadable step, then the one used."""
  copy = _copy(finished[0], tmp_path)
  for f in (copy / "checkpoints" / "10" / "state" / "ocdbt.process_0" / "d").iterdir():
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 3])
  code, out, err, _ = _cli_subprocess(["eval", "--workdir", str(copy), "--json"])
  _no_traceback(out, err)
  lines = err.strip().splitlines()
  assert code == 0 and len(lines) == 2, err
  assert "checkpoints/10 is unreadable (" in lines[0] and "using step 5, the newest readable" in lines[1]
  assert json.loads(out.strip().splitlines()[-1])["step"] == 5


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


# -- rows 7 and 8: config.json, a copy of what the checkpoints record -----------------------------

def test_a_missing_config_json_does_not_let_a_changed_recipe_resume(data_dir, tmp_path):
  workdir = tmp_path / "run"
  rt.train(_config(data_dir, num_steps=5), workdir)
  (workdir / config_lib.CONFIG_FILE).unlink()
  for field, value in (("optimizer.learning_rate", 0.05), ("optimizer.momentum", 0.5),
                       ("schedule.name", "cosine"), ("optimizer.weight_decay", 0.0)):
    with pytest.raises(workdir_lib.ConfigChangedError, match=rf"{field}: "):
      rt.train(_config(data_dir, **{field: value}), workdir)
  assert rt.train(_config(data_dir), workdir).step == 10  # the same recipe resumes and writes it again
  assert config_lib.load_config(workdir).optimizer.learning_rate == 0.1


@pytest.mark.parametrize("content", ['{"model": {"name": "cifar', "{}", "[1]"])
def test_a_damaged_config_json_is_one_line_naming_it_and_the_way_out(finished, tmp_path, capsys, content):
  copy = _copy(finished[0], tmp_path)
  path = copy / config_lib.CONFIG_FILE
  path.write_text(content)
  assert cli.main(["eval", "--workdir", str(copy)]) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"{path} " in line and "run `resnet-jax train` with the run's --config and --workdir" in line, line


def test_the_way_out_of_a_damaged_config_json_works(data_dir, finished, tmp_path, capsys):
  copy = _copy(finished[0], tmp_path)
  (copy / config_lib.CONFIG_FILE).write_text("{}")
  assert cli.main(_train_argv(copy, data_dir)) == 0  # finished: reports, trains nothing, rewrites the copy
  assert "already finished at step 10 of 10" in capsys.readouterr().out
  assert cli.main(["eval", "--workdir", str(copy), "--json"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 10


# -- row 9: a metrics line cut short by a crash ------------------------------------------------------

def test_a_torn_metrics_line_is_skipped_and_reported_and_a_resume_starts_a_fresh_line(data_dir, finished, tmp_path,
                                                                                      capsys):
  copy = _copy(finished[0], tmp_path)
  metrics = copy / Workdir.METRICS
  complete = metrics.read_text()
  metrics.write_text(complete + '{"step": 11, "kind": "tr')  # the crash's partial record
  again = rt.train(_config(data_dir), copy)  # finished: reads its last records
  assert again.step == 10 and again.train["loss"] > 0
  out = capsys.readouterr().out
  assert "skipped 1 line(s) that are not complete records" in out and "its last line was cut short" in out
  resumed = rt.train(_config(data_dir, num_steps=15), copy)
  assert resumed.step == 15
  lines = metrics.read_text().splitlines()
  assert lines[len(complete.splitlines())] == '{"step": 11, "kind": "tr'  # kept, and alone on its line
  records = Workdir(copy).read_metrics(log=None)
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


# -- rows 11 and 12: prepare -----------------------------------------------------------------------------

def test_prepare_refuses_a_cifar_file_cut_at_a_record_boundary(tmp_path, capsys):
  from resnet_jax.data import testing as data_testing  # pylint: disable=g-import-not-at-top
  source = data_testing.write_cifar10_binary(tmp_path / "src", num_train_per_batch=10000, num_test=10000, seed=0)
  batch = source / "data_batch_3.bin"
  whole = batch.read_bytes()
  batch.write_bytes(whole[:5000 * 3073])  # 5,000 whole records
  assert cli.main(["prepare", "cifar10", "--source", str(source), "--data-dir", str(tmp_path / "tfds")]) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"{batch} holds 5,000 records, the official file 10,000" in line and "--allow-partial" in line
  assert not (tmp_path / "tfds" / "cifar10" / "3.0.2").exists()
  # A test file of fewer records is a held-out subset (../shared/data has the first 1,000): accepted.
  batch.write_bytes(whole)
  test_batch = source / "test_batch.bin"
  test_batch.write_bytes(test_batch.read_bytes()[:1000 * 3073])
  files = cifar.read_files("cifar10", source)
  assert len(files.splits["train"].images) == 50000 and len(files.splits["test"].images) == 1000


def test_prepare_prints_the_counts_and_prepares_a_subset_when_asked(tmp_path, capsys):
  from resnet_jax.data import testing as data_testing  # pylint: disable=g-import-not-at-top
  source = data_testing.write_cifar10_binary(tmp_path / "src", num_train_per_batch=4, num_test=6, seed=0)
  argv = ["prepare", "cifar10", "--source", str(source), "--data-dir", str(tmp_path / "tfds")]
  assert cli.main(argv) == 2 and "data_batch_1.bin holds 4 records" in capsys.readouterr().err
  assert cli.main([*argv, "--allow-partial"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-2].endswith("(20 train, 6 test images)")
  assert out[-1] == "note: the test split holds 6 of the official 10,000 images; evaluations on it report error on those"


def test_prepare_into_a_full_disk_is_one_line_and_removes_the_partial_files(data_dir, tmp_path, mounts, capsys):
  source = data_dir.parent / "src"  # conftest's tiny dataset: ~1 MB of PNGs
  target = mounts.tmpfs(tmp_path / "disk", "size=400k") / "tfds"
  code = cli.main(["prepare", "cifar10", "--source", str(source), "--data-dir", str(target), "--allow-partial"])
  err = capsys.readouterr().err
  _no_traceback(err)
  lines = [line.strip("\r\x1b[A ") for line in err.splitlines() if line.startswith("resnet-jax")]
  assert code == 1 and lines == [f"resnet-jax prepare: cannot write cifar10 to {target}: no space left on device "
                                 "(the partial files were removed); free space or fix the directory, or pass "
                                 "another --data-dir"], err[-2000:]
  assert not list(target.glob("cifar10/*")), list(target.glob("cifar10/*"))


# -- row 13: values that would fail late -------------------------------------------------------------------

def test_an_absurd_eval_batch_is_bounded_by_the_split(data_dir, tmp_path):
  config = _config(data_dir, num_steps=2, eval_batch_size=10**9)
  assert rt.build.pipeline(config).eval_batch_size == 50  # the whole split in one batch
  assert rt.train(config, tmp_path / "run").eval["num_examples"] == 50


# -- row 14: after a NaN, the advised command works ------------------------------------------------------

def test_the_nan_message_gives_a_command_that_works(data_dir, tmp_path, capsys):
  workdir = tmp_path / "nan"
  # lr 1000 diverges at step 6; the weights of step 4 are large but finite (lr 100 reaches 1e11
  # by its last checkpoint, where float32 activations overflow at any rate).
  argv = _train_argv(workdir, data_dir, num_steps=20, checkpoint_every_steps=2, **{"optimizer.learning_rate": 1000.0})
  assert cli.main(argv) == 1
  line = _one_line(capsys.readouterr().err)
  advised = line[line.index("`resnet-jax train ") + 1:line.rindex("`")].split()
  assert advised[:3] == ["resnet-jax", "train", "--config"] and f"--config.init_from={workdir}:4" in advised
  new_dir = tmp_path / "lower"
  advised = [str(new_dir) if a == "NEW_DIR" else a.replace("LOWER", "0.01") for a in advised[1:]]
  assert cli.main([*advised, *_flags(data_dir, num_steps=3)]) == 0
  assert "initialised params and BatchNorm statistics from" in capsys.readouterr().out
  assert _steps(new_dir) == [3]
