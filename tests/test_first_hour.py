"""What a new user meets in the first hour (issue 37, item 7): provenance that names the right
code, `eval` of the committed run on another machine, the allocator and usage lines, the help
texts, `prepare`'s log and a finished run asked to train again. Each test is a row of the
the manual's "Failure behaviour" table (docs/failures.md) (the Ctrl-C, durations, logging and README rows are tested in
test_reliability.py, test_cpu_notice.py, test_allocator.py, test_architecture.py and
test_manual_examples.py).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import support

import resnet_jax as rj
from resnet_jax import cli
from resnet_jax import errors
from resnet_jax.runtime import allocator
from resnet_jax.runtime import provenance
from resnet_jax.train.group import RunResult

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py:smoke")
COMMITTED_RUN = ROOT / "experiments" / "results" / "cifar10_resnet20_full"


def _git(cwd, *args):
  subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60,
                 env=dict(os.environ, GIT_AUTHOR_NAME="u", GIT_AUTHOR_EMAIL="u@x", GIT_COMMITTER_NAME="u",
                          GIT_COMMITTER_EMAIL="u@x"))


def test_provenance_records_the_version_and_a_commit_only_of_resnet_jaxs_own_checkout(tmp_path):
  """Installed inside a repository of the user's own, that repository's commit was recorded as
  resnet_jax's: now the version, and no commit (as from a wheel)."""
  if shutil.which("git") is None:
    pytest.skip("no git on this machine")
  project = tmp_path / "my_project"
  shutil.copytree(ROOT / "resnet_jax", project / "site-packages" / "resnet_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  (project / "pyproject.toml").write_text('[project]\nname = "my-project"\n')
  _git(project, "init", "-q")
  _git(project, "add", "pyproject.toml")
  _git(project, "commit", "-q", "-m", "the user's own")
  code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from resnet_jax.runtime import provenance; "
          "print(json.dumps(provenance.code_version()))")
  out = subprocess.run([sys.executable, "-c", code, str(project / "site-packages")], capture_output=True,
                       text=True, timeout=120, check=True).stdout
  assert json.loads(out) == {"resnet_jax": rj.__version__, "commit": None}
  ours = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                        text=True, check=False).stdout.strip()
  if ours and (ROOT / ".git").exists():  # this package's own checkout: its commit
    assert provenance.code_version() == {"resnet_jax": rj.__version__, "commit": ours}


def test_eval_of_a_run_trained_elsewhere_looks_for_its_data_where_this_user_keeps_it(tmp_path, monkeypatch):
  """The committed run recorded /work/resnet20_full/tfds, another machine's folder: without
  $TFDS_DATA_DIR, TFDS's default of this user is used, and the line has no TFDS internals."""
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(errors.MissingError) as info:
    rj.train.evaluate(COMMITTED_RUN)
  message = str(info.value)
  assert message.startswith(f"cifar10 is not prepared in {tmp_path / 'tensorflow_datasets'}; run `resnet-jax "
                            f"prepare cifar10 --source DIR_OR_ARCHIVE --data-dir {tmp_path / 'tensorflow_datasets'}`")
  assert "/work/resnet20_full" not in message and "NotImplementedError" not in message


def test_rj_compare_in_a_python_without_jemalloc_says_how_to_start_it(data_dir, tmp_path, monkeypatch, capsys):
  """Only `resnet-jax` re-executes with jemalloc; a Python program that trains said nothing and
  ran 25-40 % slower."""
  for name in ("LD_PRELOAD", allocator.ACTIVE_ENV, allocator.ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  study = rj.compare(base=SMOKE, variants={"a": {}}, workdir=tmp_path, run=False,
                     overrides={**support.TINY_SPLITS, "data.data_dir": str(data_dir)})
  study.run(train_fn=lambda config, workdir, **_: RunResult(step=1, workdir=str(workdir), eval={"error": 50.0}))
  said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("allocator: ")]
  assert len(said) == 1, said  # with jemalloc installed: how to start Python with it; else how to install it
  assert said[0].startswith("allocator: this Python runs with the system's malloc, and CPU training is ~25-40 % "
                            "faster with jemalloc: start it as `LD_PRELOAD=") or said[0] == allocator.INSTALL_HINT


@pytest.mark.parametrize("argv, message", [
    (["train", "--workdir", "run"], "--config is required"),
    (["train", "--config", "cifar10_resnet20"], "--workdir is required"),
    (["train", "--config", "cifar10_resnet20", "--workdir", "run", "--frobnicate"], "unrecognised arguments"),
    (["train", "--config", "cifar10_resnet20", "--workdir", "run", "--pack", "maybe"], "--pack: invalid choice"),
    (["eval"], "the following arguments are required: --workdir"),
    (["eval", "--workdir", "run", "--step", "last"], "--step 'last' is not a step number"),
])
def test_a_usage_error_comes_before_the_allocator_re_executes(argv, message, monkeypatch, capsys):
  """From the command line: one line at once (it came after the allocator's line and 5-9 s)."""
  def re_executed(argv):
    raise AssertionError("re-executed before the usage was checked")
  monkeypatch.setattr(allocator, "reexec_if_useful", re_executed)
  monkeypatch.setattr(sys, "argv", ["resnet-jax", *argv])
  assert cli.main() == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], lines


def test_the_help_texts_name_every_flag_a_new_user_needs(capsys):
  assert cli.main(["--help"]) == 0
  usage = capsys.readouterr().out
  for flag in ("--seeds", "--pack", "--time-limit", "prepare  NAME [--source DIR_OR_ARCHIVE]", "config.json"):
    assert flag in usage, flag
  with pytest.raises(SystemExit):
    cli.main(["eval", "--help"])
  assert "--workdir WORKDIR the --workdir of a `resnet-jax train` run" in " ".join(capsys.readouterr().out.split())


def test_prepare_writes_its_own_lines_only(tmp_path, capsys):
  """No TFDS "Downloading and preparing dataset Unknown size" line, and no progress bars moving
  the cursor in a log (stderr is not a terminal here)."""
  from resnet_jax.data import testing as data_testing  # pylint: disable=import-outside-toplevel
  source = data_testing.write_cifar10_binary(tmp_path / "src", num_train_per_batch=4, num_test=6, seed=0)
  capsys.readouterr()
  assert cli.main(["prepare", "cifar10", "--source", str(source), "--data-dir", str(tmp_path / "tfds"),
                   "--allow-partial"]) == 0
  captured = capsys.readouterr()
  assert captured.out.splitlines()[0].startswith("prepared cifar10 in ") and len(captured.out.splitlines()) == 2
  assert captured.err == "", captured.err[-2000:]


def test_a_finished_run_asked_to_train_again_says_so_in_one_line(data_dir, tmp_path, capsys):
  argv = ["train", "--config", SMOKE, "--workdir", str(tmp_path / "run"),
          *[f"--config.{k}={v}" for k, v in {**support.TINY_SPLITS, "data.data_dir": data_dir,
                                               "eval_batch_size": 25, "num_steps": 2}.items()]]
  assert cli.main(argv) == 0
  capsys.readouterr()
  assert cli.main(argv) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("already finished at step 2 of 2: eval error "), out
