"""Every named network keeps its parameters and its function (tests/fixtures/model_golden.npz).

The fixture is written by `tests/fixtures/make_model_golden.py`; its layouts come from the
model code before it gained extension points, its outputs from the code that gave the head
fb.resnet.torch's initialisation. Refresh it only for an intended change of a network.
"""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from resnet_jax import models

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_model_golden", FIXTURES / "make_model_golden.py")
golden_lib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_lib)
GOLDEN = np.load(golden_lib.OUT)
NAMES = sorted({k.split("/")[0] for k in GOLDEN.files})


def test_every_registered_network_has_a_golden_entry():
  assert NAMES == models.names()


@pytest.mark.parametrize("name", NAMES)
def test_network_layout_unchanged(name):
  got = golden_lib.layout(name, models)
  assert int(got["params"]) == int(GOLDEN[f"{name}/params"])
  assert bytes(got["digest"]) == bytes(GOLDEN[f"{name}/digest"]), "parameter tree (paths/shapes) changed"


@pytest.mark.parametrize("name", golden_lib.OUTPUT_NAMES)
def test_network_outputs_unchanged(name):
  got = golden_lib.outputs(name, models)
  for key in ("eval", "train"):
    want = GOLDEN[f"{name}/{key}"]
    # Float32 through 50 layers differs by up to ~1e-4 of the largest logit between CPUs (the
    # fixture's AMD EPYC and an Intel Xeon: other vector widths, other summation orders); a
    # changed network (a stride, an activation, an init) changes logits by O(1) of that scale.
    scale = max(1.0e-3, float(np.abs(want).max()))
    np.testing.assert_allclose(got[key], want, rtol=1e-3, atol=1e-3 * scale, err_msg=key)
  np.testing.assert_allclose(float(got["stats_sum"]), float(GOLDEN[f"{name}/stats_sum"]), rtol=1e-4)
