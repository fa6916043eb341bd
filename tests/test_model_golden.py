"""Every named network keeps its parameters and its function (tests/fixtures/model_golden.npz).

The fixture was written by `tests/fixtures/make_model_golden.py` from the model code
before it gained extension points; refresh it only for an intended change of a network.
"""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from resnet_jax import models

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_model_golden", FIXTURES / "make_model_golden.py")
golden_lib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_lib)
GOLDEN = np.load(golden_lib.OUT)
NAMES = sorted({k.split("/")[0] for k in GOLDEN.files})


def test_every_registered_network_has_a_golden_entry():
  assert NAMES == models.names()


# Outputs are compared for a set that covers every block, unit order, stem and shortcut kind
# of the registry; the layout (parameter paths, shapes, count) for every network.
OUTPUT_NAMES = ("cifar_resnet20", "cifar_plain20", "cifar_preact_resnet164", "resnext29_8x64d", "resnet18",
                "resnet50", "preact_resnet50", "plain18", "resnext50_32x4d", "wide_resnet50_2")


@pytest.mark.parametrize("name", NAMES)
def test_network_layout_unchanged(name):
  model = models.create(name)
  variables = models.abstract_variables(model, golden_lib.golden_inputs(name, models).shape)
  assert models.count_params(variables) == int(GOLDEN[f"{name}/params"])
  assert golden_lib.tree_digest(variables).encode() == bytes(GOLDEN[f"{name}/digest"]), \
      "parameter tree (paths/shapes) changed"


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_network_outputs_unchanged(name):
  got = golden_lib.compute(name, models)
  for key in ("eval", "train"):
    np.testing.assert_allclose(got[key], GOLDEN[f"{name}/{key}"], rtol=2e-5, atol=2e-5, err_msg=key)
  np.testing.assert_allclose(float(got["stats_sum"]), float(GOLDEN[f"{name}/stats_sum"]), rtol=1e-5)
