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
