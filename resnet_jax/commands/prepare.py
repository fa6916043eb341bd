"""`resnet-jax prepare NAME [--source DIR] [--data-dir TFDS_DIR]`: a TFDS dataset as ArrayRecord, no TensorFlow."""
from __future__ import annotations

import sys
from typing import Sequence

from resnet_jax.commands import ArgumentParser

import resnet_jax.data as rjd


def main(argv: Sequence[str]) -> int:
  p = ArgumentParser(prog="resnet-jax prepare",
                              description="Prepare a TFDS dataset (ArrayRecord) without TensorFlow.")
  p.add_argument("name", help="dataset, e.g. cifar10, cifar100, imagenet2012")
  p.add_argument("--source", default=None, help="official files (folder or archive); "
                 "omitted: download the official archive")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  args = p.parse_args(argv)
  try:
    path = rjd.prepare(args.name, args.source, args.data_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f"resnet-jax prepare: error: {e}", file=sys.stderr)
    return 2
  print(f"prepared {args.name} in {path}")
  return 0
