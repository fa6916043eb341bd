"""`resnet-jax models [--filter SUBSTR]`: every registered network with parameters and MACs.

Shapes only, no weights: `models.size` traces each network abstractly with at most two
units per stage, so the whole list takes seconds (a 1202-layer network traced whole ~30 s).
"""
from __future__ import annotations

from typing import Sequence

from resnet_jax.commands import ArgumentParser

from resnet_jax import models


def main(argv: Sequence[str]) -> int:
  p = ArgumentParser(prog="resnet-jax models", description="Registered networks with parameters and multiply-adds.")
  p.add_argument("--filter", default="", help="only names containing this string")
  args = p.parse_args(argv)
  print(f"{'name':<28} {'input':>9} {'params':>14} {'MACs/image':>16}")
  for name in models.names():
    if args.filter not in name:
      continue
    size = 32 if models.config(name).get("stem") == "cifar" else 224
    params, macs = models.size(models.create(name), (1, size, size, 3))
    print(f"{name:<28} {f'{size}x{size}':>9} {params:>14,} {macs:>16,}", flush=True)
  return 0
