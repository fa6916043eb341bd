"""`resnet-jax models [--filter SUBSTR]`: every registered network with parameters and MACs."""
from __future__ import annotations

from typing import Sequence

from resnet_jax.commands import ArgumentParser

from resnet_jax import models


def main(argv: Sequence[str]) -> int:
  p = ArgumentParser(prog="resnet-jax models",
                              description="Registered networks with parameters and multiply-adds.")
  p.add_argument("--filter", default="", help="only names containing this string")
  args = p.parse_args(argv)
  print(f"{'name':<28} {'input':>9} {'params':>14} {'MACs/image':>16}")
  for name in models.names():
    if args.filter not in name:
      continue
    size = 32 if models.config(name).get("stem") == "cifar" else 224
    model = models.create(name)
    shape = (1, size, size, 3)
    params = models.count_params(models.abstract_variables(model, shape))
    print(f"{name:<28} {f'{size}x{size}':>9} {params:>14,} {models.flops(model, shape):>16,}", flush=True)
  return 0
