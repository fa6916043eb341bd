"""XLA:CPU compiler options for the train step: elementwise ops and reductions in YNNPACK.

XLA:CPU hands some operations to YNNPACK, chosen by `xla_cpu_experimental_ynn_fusion_type`.
In jaxlib 0.10.2 the default sends dots, convolutions and reductions there. For a ResNet
train step another set is much faster (experiments/README.md, "Against PyTorch on the same
cores"; one core, interleaved):

* YNNPACK's convolutions are slow as kernel gradients (ResNet-20's ran at 24-57 GFLOP/s
  against 41-106 for XLA's Eigen convolutions; they took 15 s of a 32 s ResNet-50 step), so
  convolutions stay with Eigen;
* elementwise ops and reductions (BatchNorm, ReLU, the residual adds and their
  gradients) become YNNPACK fusions. XLA's own loop fusion duplicates cheap producers into
  every consumer: the transposes around the kernel-gradient convolutions recomputed chains
  of BatchNorm, ReLU and residual adds (three units deep) in transposed order, a fifth of a
  ResNet-20 step. A YNNPACK fusion is computed once.

Together: ResNet-20 b128 1.44x, ResNet-50 b32 2.41x faster per step on this project's CPU.
Results change only by float rounding (another association order of the same sums),
as much as other compilation choices do (tests/test_cpu_conv.py).

The options apply to the train step's compilation only (`make_train_step`), so nothing
else in the process changes. A user who sets `--xla_cpu_experimental_ynn_fusion_type`
in XLA_FLAGS keeps it; a jaxlib that does not know the option or its values gets none.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Dict

import jax
import jax.numpy as jnp

YNN_FUSION_TYPES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_ELTWISE",
                    "LIBRARY_FUSION_TYPE_REDUCE")
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.lru_cache(maxsize=None)
def _accepted(option: str, value: str) -> bool:
  """Whether this jaxlib compiles with `option=value` (checked once, on a scalar program)."""
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(compiler_options={option: value})
  except Exception as e:  # pylint: disable=broad-except  # jaxlib raises XlaRuntimeError or ValueError
    warnings.warn(f"XLA:CPU does not accept {option}={value} ({str(e).splitlines()[0][:200]}); the CPU "
                  "train step compiles with XLA's defaults (slower)", stacklevel=3)
    return False
  return True


def train_step_options(platform: str) -> Dict[str, str]:
  """Compiler options for the train step on `platform` ({} off CPU, or where not accepted)."""
  if platform != "cpu" or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return {}
  value = ",".join(YNN_FUSION_TYPES)
  return {YNN_OPTION: value} if _accepted(YNN_OPTION, value) else {}
