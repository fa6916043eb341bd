"""The manual builds with every warning an error: broken cross-references, links and anchors,
docstrings the API reference cannot read, pages left out of the navigation."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_manual_builds_with_warnings_as_errors(tmp_path):
  env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
  built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
  assert (tmp_path / "site" / "api" / "models" / "index.html").is_file()


def test_the_results_and_configs_pages_are_the_repositorys_own_files():
  """One copy of each: the manual's Results and Configs pages are links to experiments/README.md
  and resnet_jax/configs/README.md (a `sed -i` over docs/*.md once turned them into stale copies)."""
  for page, target in (("experiments.md", "experiments/README.md"), ("configs.md", "resnet_jax/configs/README.md"),
                       ("results", "experiments/results")):
    link = ROOT / "docs" / page
    assert link.is_symlink() and link.resolve() == (ROOT / target).resolve(), page
