"""RandAugment and TrivialAugment on the device, against torchvision on real CIFAR-10 images.

`fixtures/make_augment_reference.py` applied each of the 14 operations of torchvision's
`RandAugment` (bin 9 of 31, positive) and `TrivialAugmentWide` (bin 25, negated where signed)
to six images of data_batch_1.bin with torchvision's own magnitude tables. Ours must give the
same magnitude from its table at the same bin, and an image within one grey level of
torchvision's: the geometric ops and most colour ops are exact; a blend can differ by one
level where its float32 product sits on a whole grey level (torchvision forms the factor
1 + m in double precision, then truncates), autocontrast likewise at its scale.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import auto_augment

REF = np.load(pathlib.Path(__file__).parent / "fixtures" / "augment_reference.npz")
POLICIES = {"randaugment": auto_augment.RAND_AUGMENT, "trivialaugment": auto_augment.TRIVIAL_AUGMENT}
CASES = [(policy, name) for policy, ops in POLICIES.items() for name in ops]


@functools.lru_cache(maxsize=None)
def _apply(policy: str):
  """Operation `index` at bin `level` on each image: one compiled program per policy."""
  ops = POLICIES[policy]
  return jax.jit(jax.vmap(lambda image, index, level, negate: auto_augment.apply_op(ops, image, index, level, negate),
                          in_axes=(0, None, None, None)))


@pytest.mark.parametrize("policy, name", CASES)
def test_each_operation_is_torchvisions_within_one_grey_level(policy, name):
  key = f"{policy}/{name}"
  op, level, negate = POLICIES[policy][name], float(REF[f"{key}/level"]), bool(REF[f"{key}/negate"])
  assert list(POLICIES[policy]).index(name) == int(REF[f"{key}/index"])
  value = float(op.value(jnp.float32(level), (32, 32)))
  assert (-value if negate else value) == pytest.approx(float(REF[f"{key}/magnitude"]), rel=1e-6, abs=1e-6)
  out = np.asarray(_apply(policy)(jnp.asarray(REF["images"], jnp.float32), int(REF[f"{key}/index"]),
                                  jnp.float32(level), negate))
  assert np.all(out == np.round(out)) and out.min() >= 0 and out.max() <= 255   # whole grey levels
  difference = np.abs(out - REF[f"{key}/result"].astype(np.float32))
  assert difference.max() <= 1.0, (key, difference.max(), int((difference > 0).sum()))


def test_policies_draw_per_example_from_the_step_key(fast_compile):
  """An image's operations depend on (key, its row) only: the first rows of a batch are
  augmented alike whatever the other rows hold; another key draws others."""
  images = jnp.asarray(REF["images"], jnp.float32)
  other = images.at[3:].set(images[:3])
  for policy in (lambda x, k: auto_augment.rand_augment(x, k, 2, 9.0, 1.5), auto_augment.trivial_augment):
    policy = jax.jit(policy)
    first = policy(images, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(first[:3], policy(other, jax.random.PRNGKey(3))[:3])
    assert not np.array_equal(first, policy(images, jax.random.PRNGKey(4)))
