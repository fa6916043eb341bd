"""The built distribution works installed by name, outside the repository.

Builds the sdist and the wheel of the repository (`python -m build`), checks what each
carries (the license, `py.typed`, the configs and their README), installs the wheel
(without dependencies) into a fresh venv in a temporary folder that borrows this
environment's dependencies (downloading jax, flax and TFDS again would take minutes), and
from a folder that is not the repository does what a user does first: list networks and
configs, prepare a tiny CIFAR-10, train the smoke config with the installed `resnet-jax`
command and with `rj.compare`, evaluate the run and load it with `load_network`.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile

import pytest

import support

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=600):
  out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
  return out.stdout


DIST = "resnetax"
CARRIED = ("LICENSE", "resnet_jax/py.typed", "resnet_jax/configs/README.md", "resnet_jax/configs/cifar10_resnet20.py")


def _built(tmp_path):
  """(wheel, sdist) of the repository, built as a release would be."""
  out = tmp_path / "dist"
  built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
                         cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=900)
  assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
  assert "Warning" not in built.stderr, built.stderr[-3000:]  # no SetuptoolsDeprecationWarning and the like
  return next(out.glob(f"{DIST}-*.whl")), next(out.glob(f"{DIST}-*.tar.gz"))


def _check_contents(wheel, sdist):
  import resnet_jax  # pylint: disable=import-outside-toplevel
  version = resnet_jax.__version__
  assert wheel.name == f"{DIST}-{version}-py3-none-any.whl" and sdist.name == f"{DIST}-{version}.tar.gz"
  in_wheel = zipfile.ZipFile(wheel).namelist()
  in_sdist = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
  for name in CARRIED:
    assert name in in_sdist, name
    assert (name in in_wheel) or (name == "LICENSE" and f"{DIST}-{version}.dist-info/licenses/LICENSE" in in_wheel), name


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_built_wheel_installed_outside_the_checkout_trains_evaluates_and_loads(tmp_path):
  wheel, sdist = _built(tmp_path)
  _check_contents(wheel, sdist)
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=os.environ)
  python = venv / "bin" / "python"
  # Borrow this environment's dependencies (jax, flax, ...) through a .pth file; the
  # editable install of this checkout is not visible there (.pth files of a directory
  # named in another .pth are not processed).
  target = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=tmp_path, env=os.environ).strip())
  (target / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp_path,
       env=os.environ)

  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env.update(JAX_PLATFORMS="cpu", RESNET_JAX_ALLOCATOR="system", TFDS_DATA_DIR=str(tmp_path / "tfds"),
             **support.FAST_COMPILE_ENV)
  work = tmp_path / "elsewhere"
  work.mkdir()
  script = textwrap.dedent(f"""
      import importlib.metadata, pathlib
      import resnet_jax as rj
      from resnet_jax.data import testing
      assert "site-packages" in rj.__file__ and {str(ROOT)!r} not in rj.__file__, rj.__file__
      assert importlib.metadata.version({DIST!r}) == rj.__version__
      assert "cifar10_resnet110" in rj.configs.names() and "resnet50d" in rj.models.names()
      print(rj.configs.load("cifar10_resnet110").model.name)
      source = testing.write_cifar10_binary(pathlib.Path("src"), num_train_per_batch=32, num_test=20, seed=0)
      rj.data.prepare("cifar10", source, {str(tmp_path / "tfds")!r}, allow_partial=True)
      study = rj.compare(base="cifar10_resnet20:smoke", variants={{"gate": {{"model.shortcut": "gate"}}}},
                         workdir="study", overrides={{"num_steps": 2, "data.train_split": "train",
                                                     "data.eval_split": "test", "eval_batch_size": 20}})
      print("study", study.summary()["gate"]["runs"])
  """)
  out = _run([str(python), "-c", script], cwd=work, env=env)
  assert "cifar_resnet110" in out and "study 1" in out
  command = str(venv / "bin" / "resnet-jax")
  assert "resnet50d" in _run([command, "models", "--filter", "resnet50d"], cwd=work, env=env)
  out = _run([command, "train", "--config", "cifar10_resnet20:smoke", "--workdir", "run",
              "--config.num_steps=2", "--config.data.train_split=train", "--config.data.eval_split=test",
              "--config.eval_batch_size=20"], cwd=work, env=env)
  assert "finished at step 2" in out
  assert "on 20 images of 'test'" in _run([command, "eval", "--workdir", "run"], cwd=work, env=env)
  loaded = _run([str(python), "-c", "import numpy as np, resnet_jax as rj\n"
                 "net = rj.train.load_network('run')\n"
                 "print(net.name, net.step, net(np.zeros((2, 32, 32, 3), np.uint8)).shape)"], cwd=work, env=env)
  assert "cifar_resnet20 2 (2, 10)" in loaded


def test_the_distribution_name_is_pyprojects_and_a_checkouts_provenance_knows_it():
  """The index's name has one owner (`resnet_jax.DISTRIBUTION`): pyproject's [project] name is
  it, so that runs trained from a checkout record its commit (a mismatch recorded none)."""
  import tomllib  # pylint: disable=g-import-not-at-top
  import resnet_jax  # pylint: disable=g-import-not-at-top
  from resnet_jax.runtime import provenance  # pylint: disable=g-import-not-at-top
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert project["name"] == resnet_jax.DISTRIBUTION == "resnetax"
  assert provenance._is_this_project(ROOT)  # pylint: disable=protected-access
