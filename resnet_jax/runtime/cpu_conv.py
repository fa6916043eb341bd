"""Convolution gradients that XLA:CPU runs with Eigen inside loops (`lax.scan`) too.

XLA:CPU runs a convolution with its fast Eigen kernel only when the convolution is
*canonical*: input NHWC, kernel HWIO, output NHWC. JAX differentiates an NHWC/HWIO
convolution into two convolutions that are not: the input gradient reads the kernel
as HWOI (`b01f_01oi->b01f` in HLO) and the kernel gradient reads the input as CHWN and
writes HWIO (`f01b_i01o->01bf`). XLA's `ConvCanonicalization` pass rewrites such
convolutions into transposes around a canonical one, but only those of the *entry*
computation (xla/service/cpu/conv_canonicalization.cc walks
`module->entry_computation()`). The body of a `while` loop, which is what `lax.scan`
over train steps becomes, keeps them, and XLA emits them as naive loop nests: a
ResNet-20 step ran about 16x slower under `make_train_step(..., steps_per_call=K)`
than as K single steps (see experiments/README.md, "Steps per dispatch").

`conv_general_dilated` here is a drop-in `lax.conv_general_dilated` whose VJP does
that canonicalisation itself, in JAX, where every computation sees it: explicit
transposes around canonical convolutions, the same program XLA builds for the entry
computation. Gradients are those of JAX's own rules (equal to the last bit on CPU; the
tests compare them). It has no JVP rule (a `jax.custom_vjp`), so the engine uses it
only inside its train step, and only on CPU (`for_platform`); GPU and TPU compilers
choose convolution layouts themselves.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.models import layers

Padding = Tuple[Tuple[int, int], ...]


def _canonical_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
  """NHWC input, HWIO kernel, NHWC output for `num_spatial` spatial dimensions."""
  spatial = tuple(range(1, num_spatial + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, num_spatial + 1) + spatial,
                                  rhs_spec=(num_spatial + 1, num_spatial) + tuple(range(num_spatial)),
                                  out_spec=(0, num_spatial + 1) + spatial)


def _dilated(shape: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
  return tuple(0 if s == 0 else 1 + d * (s - 1) for s, d in zip(shape, dilation))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv(lhs, rhs, strides, padding, rhs_dilation, groups, precision, preferred_element_type):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, None, rhs_dilation,
                                  _canonical_numbers(lhs.ndim - 2), groups, 1, precision,
                                  preferred_element_type)


def _conv_fwd(lhs, rhs, strides, padding, rhs_dilation, groups, precision, preferred_element_type):
  out = _conv(lhs, rhs, strides, padding, rhs_dilation, groups, precision, preferred_element_type)
  return out, (lhs, rhs)


def _conv_bwd(strides, padding, rhs_dilation, groups, precision, preferred_element_type, residuals, g):
  """JAX's transpose rules of `conv_general_dilated`, with every convolution canonical."""
  lhs, rhs = residuals
  n = lhs.ndim - 2
  numbers = _canonical_numbers(n)
  in_size, out_size = lhs.shape[1:-1], g.shape[1:-1]
  kernel_size = _dilated(rhs.shape[:n], rhs_dilation)
  strided_out = _dilated(out_size, strides)

  # Input gradient: the output gradient convolved with the spatially reversed kernel, input
  # and output features swapped (per group), the forward strides as input dilation.
  in_per_group, out_features = rhs.shape[n], rhs.shape[n + 1]
  kernel = rhs
  if groups > 1:  # [K, I/G, O] -> [K, I, O/G], group-major in I, as the forward pairs them
    kernel = kernel.reshape(rhs.shape[:n] + (in_per_group, groups, out_features // groups))
    kernel = jnp.moveaxis(kernel, n + 1, n).reshape(rhs.shape[:n] + (groups * in_per_group,
                                                                     out_features // groups))
  kernel = jnp.swapaxes(lax.rev(kernel, tuple(range(n))), n, n + 1)  # HWIO of the transposed conv
  low = [k - 1 - lo for k, (lo, _) in zip(kernel_size, padding)]
  high = [i + k - 1 - o - l for i, k, o, l in zip(in_size, kernel_size, strided_out, low)]
  lhs_grad = lax.conv_general_dilated(g, kernel, (1,) * n, tuple(zip(low, high)), strides, rhs_dilation,
                                      numbers, groups, 1, precision, preferred_element_type)

  # Kernel gradient: input channels as the batch, examples as the features, the output
  # gradient as the kernel; groups become batch groups.
  examples_last = jnp.transpose(lhs, (n + 1,) + tuple(range(1, n + 1)) + (0,))   # [C, S..., N]
  g_as_kernel = jnp.moveaxis(g, 0, n)                                              # [S'..., N, O]
  high = [o - i + k - lo - 1 for o, i, k, (lo, _) in zip(strided_out, in_size, kernel_size, padding)]
  rhs_grad = lax.conv_general_dilated(examples_last, g_as_kernel, rhs_dilation,
                                      tuple((lo, h) for (lo, _), h in zip(padding, high)), None, strides,
                                      numbers, 1, groups, precision, preferred_element_type)
  rhs_grad = jnp.moveaxis(rhs_grad, 0, n)                                          # [K..., I/G, O]
  return lhs_grad.astype(lhs.dtype), rhs_grad.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _varying_axes(x: jax.Array) -> frozenset:
  """Mesh axes over which `x` varies inside `jax.shard_map` (empty outside)."""
  axis_type = getattr(jax.typeof(x), "mat", None)
  return frozenset(axis_type.varying) if axis_type is not None else frozenset()


def _same_varying_axes(lhs: jax.Array, rhs: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Inside `jax.shard_map` (bn.mode=per_device) the kernel is replicated and the images vary
  over the data axis. A custom VJP must return cotangents of its inputs' types, so the
  kernel enters it already cast to varying; JAX transposes that cast into the sum of the
  kernel gradient over the axis, as it does for `lax.conv_general_dilated`."""
  lhs_axes, rhs_axes = _varying_axes(lhs), _varying_axes(rhs)
  if rhs_axes - lhs_axes:
    lhs = jax.lax.pcast(lhs, tuple(sorted(rhs_axes - lhs_axes)), to="varying")
  if lhs_axes - rhs_axes:
    rhs = jax.lax.pcast(rhs, tuple(sorted(lhs_axes - rhs_axes)), to="varying")
  return lhs, rhs


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` whose gradients are canonical convolutions (module docstring).

  Only canonical forward convolutions (NHWC/HWIO, no input dilation, no batch groups),
  the ones `flax.linen.Conv` builds, take the custom gradient; others are passed to
  `lax.conv_general_dilated` unchanged.
  """
  n = lhs.ndim - 2
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (numbers != _canonical_numbers(n) or batch_group_count != 1
           or (lhs_dilation is not None and any(d != 1 for d in lhs_dilation)))
  if plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  rhs_dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * n
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:-1], _dilated(rhs.shape[:n], rhs_dilation),
                                  window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  lhs, rhs = _same_varying_axes(lhs, rhs)
  return _conv(lhs, rhs, tuple(window_strides), padding, rhs_dilation, int(feature_group_count),
               precision, preferred_element_type)


def _is_flax_conv(constructor: Any) -> bool:
  """A `flax.linen.Conv` subclass, or a `functools.partial` of one."""
  while isinstance(constructor, functools.partial):
    if "conv_general_dilated" in constructor.keywords or "conv_general_dilated_cls" in constructor.keywords:
      return False  # the user chose the convolution function: keep it
    constructor = constructor.func
  return isinstance(constructor, type) and issubclass(constructor, nn.Conv)


def with_canonical_gradients(model: nn.Module) -> Tuple[nn.Module, bool]:
  """`model` with its convolutions built on `conv_general_dilated`, and whether that was possible.

  Possible for a network with a `conv` field naming a built-in convolution or holding a
  `flax.linen.Conv` constructor (every `resnet_jax.models.ResNet`).
  """
  conv = getattr(model, "conv", None)
  if isinstance(conv, str):
    conv = layers.CONVS.get(conv)
  if conv is None or not _is_flax_conv(conv):
    return model, False
  return model.clone(conv=functools.partial(conv, conv_general_dilated=conv_general_dilated)), True


def for_platform(model: nn.Module, platform: str) -> Tuple[nn.Module, bool]:
  """The model the train step should differentiate on `platform` ("cpu", "gpu", "tpu").

  Returns (model, canonical): on CPU the model with canonical convolution gradients when
  `with_canonical_gradients` can build it; elsewhere `model` itself (canonical True).
  """
  if platform != "cpu":
    return model, True
  return with_canonical_gradients(model)
