"""Model size and cost: parameter counts, multiply-adds, a per-stage summary table.

Nothing here allocates the model's weights: shapes come from ``jax.eval_shape`` and
multiply-adds from the convolution and dense layers the forward pass calls.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.resnet import ResNet


def count_params(variables: Any) -> int:
  """Trainable parameters: the ``params`` collection (or the whole tree if there is none).

  BatchNorm running statistics are not parameters, as in torchvision's ``num_params``.
  """
  tree = variables.get("params", variables) if hasattr(variables, "get") else variables
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
  """The model's variables as ``ShapeDtypeStruct``s (no memory, no compute)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False))


def _layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
  """Multiply-adds of every convolution and dense layer, keyed by top-level submodule.

  Counted as the papers do (He et al. 2015, Table 1; torchvision's ``_ops``): each
  output element of a convolution costs kernel-height × kernel-width × input
  channels / groups multiply-adds, zero padding included.
  """
  totals: dict[str, int] = {}
  variables = abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  with nn.intercept_methods(_mac_counter(totals)):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return totals


def _mac_counter(totals: dict[str, int]):
  """A Flax method interceptor adding each convolution's and dense layer's multiply-adds to
  `totals[top-level submodule]` (see `_layer_macs`)."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      x = args[0]
      if isinstance(module, nn.Conv):
        per_output = int(np.prod(module.kernel_size)) * x.shape[-1] // module.feature_group_count
      else:
        per_output = x.shape[-1]
      key = module.path[0] if module.path else type(module).__name__
      totals[key] = totals.get(key, 0) + int(np.prod(out.shape)) * per_output
    return out
  return interceptor


def _module_costs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, int]]:
  """(parameters, multiply-adds of the batch) of every top-level submodule, from one abstract `init`."""
  macs: dict[str, int] = {}
  with nn.intercept_methods(_mac_counter(macs)):
    variables = abstract_variables(model, input_shape)
  params = variables.get("params", {})
  names = set(params) | set(macs)
  return {k: (count_params(params.get(k, {})), macs.get(k, 0)) for k in names}


def size(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
  """``(count_params, flops)`` of a network, in one abstract pass over at most two units per stage.

  The units after the first of a ``ResNet`` stage are built with the same arguments and see
  the same input shape, so they are identical: the network is traced with
  ``min(n, 2)`` units per stage and each stage's second unit is counted ``n - 1`` times
  (tracing a 1202-layer network whole takes ~30 s). Other modules are traced whole.
  """
  repeated = isinstance(model, ResNet) and type(model).__call__ is ResNet.__call__
  sizes = tuple(model.stage_sizes) if repeated else ()
  traced = model.clone(stage_sizes=tuple(min(n, 2) for n in sizes)) if repeated else model
  costs = _module_costs(traced, input_shape)
  params = sum(p for p, _ in costs.values())
  macs = sum(m for _, m in costs.values())
  for stage, n in enumerate(sizes):
    if n > 2:
      unit_params, unit_macs = costs[f"stage{stage + 1}_unit2"]
      params += (n - 2) * unit_params
      macs += (n - 2) * unit_macs
  return params, int(round(macs / input_shape[0]))


def flops(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Multiply-adds per image of the forward pass, counted as the papers count them.

  These are the papers' "FLOPs" (e.g. 3.8×10⁹ for ResNet-50 in He et al. 2015,
  Table 1): every multiply-add of the convolutions and the classifier. See
  ``xla_flops`` for XLA's own count of the compiled computation.
  """
  return int(round(sum(_layer_macs(model, input_shape).values()) / input_shape[0]))


def xla_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Multiply-adds per image by XLA's cost analysis of the lowered forward pass.

  XLA counts a multiply-add as two operations (halved here), also counts
  BatchNorm/ReLU/pooling arithmetic, and skips convolution taps that land on zero
  padding, so it reads 2-8% below ``flops`` for these networks.
  """
  variables = abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return int(round(float(cost["flops"]) / 2 / input_shape[0]))


def stage_costs(model: nn.Module, input_shape: Sequence[int]) -> list[dict[str, Any]]:
  """Per stage (stem, stage1.., head): output shape, parameters, multiply-adds per image."""
  variables = abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_features=True), variables, x)
  macs = _layer_macs(model, input_shape)
  params = variables["params"]

  def stage_of(module_name: str) -> str:
    prefix = module_name.split("_")[0]
    return "head" if prefix in ("head", "final") else prefix

  rows = []
  stages = ["stem"] + [f"stage{i + 1}" for i in range(len(model.stage_sizes))] + ["head"]
  for stage in stages:
    if stage == "head":  # a headless network (num_classes=0) outputs its pooled features
      shape = (input_shape[0], model.num_classes or feats["pre_logits"].shape[-1])
    else:
      shape = tuple(feats[stage].shape)
    rows.append(dict(
        stage=stage, output_shape=shape,
        params=sum(count_params(v) for k, v in params.items() if stage_of(k) == stage),
        macs=int(round(sum(v for k, v in macs.items() if stage_of(k) == stage) / input_shape[0]))))
  return rows


def summary(model: nn.Module, input_shape: Sequence[int]) -> str:
  """A per-stage table (output shape, parameters, multiply-adds per image) as text."""
  rows = stage_costs(model, input_shape)
  header = f"{'stage':<10} {'output shape':<22} {'params':>14} {'MACs/image':>16}"
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r['stage']:<10} {str(r['output_shape']):<22} {r['params']:>14,} {r['macs']:>16,}")
  lines.append("-" * len(header))
  lines.append(f"{'total':<10} {'':<22} {sum(r['params'] for r in rows):>14,} {sum(r['macs'] for r in rows):>16,}")
  return "\n".join(lines)
