"""A non-editable install outside the repository works: configs ship inside the package.

Builds a wheel of the repository, installs it (without dependencies) into a fresh venv in a
temporary folder that borrows this environment's dependencies, and from a folder that is
not the repository loads a config by name, prepares a tiny CIFAR-10 and trains the smoke
config with the installed `resnet-jax` command and with `rj.compare`.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=600):
  out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
  return out.stdout


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_trains_a_named_config(tmp_path):
  wheels = tmp_path / "wheels"
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                         cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=600)
  assert built.returncode == 0, built.stderr[-3000:]
  assert "Warning" not in built.stderr, built.stderr[-3000:]  # no SetuptoolsDeprecationWarning and the like
  wheel = next(wheels.glob("resnet_jax-*.whl"))
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
  env.update(JAX_PLATFORMS="cpu", RESNET_JAX_ALLOCATOR="system", TFDS_DATA_DIR=str(tmp_path / "tfds"))
  work = tmp_path / "elsewhere"
  work.mkdir()
  script = textwrap.dedent(f"""
      import pathlib
      import resnet_jax as rj
      from resnet_jax.data import testing
      assert "site-packages" in rj.__file__ and {str(ROOT)!r} not in rj.__file__, rj.__file__
      assert "cifar10_resnet110" in rj.configs.names()
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
  out = _run([str(venv / "bin" / "resnet-jax"), "train", "--config", "cifar10_resnet20:smoke", "--workdir", "run",
              "--config.num_steps=2", "--config.data.train_split=train", "--config.data.eval_split=test",
              "--config.eval_batch_size=20"], cwd=work, env=env)
  assert "finished at step 2" in out
