"""`resnet-jax prepare NAME [--source DIR] [--data-dir TFDS_DIR]`: a TFDS dataset as ArrayRecord, no TensorFlow."""
from __future__ import annotations

from typing import Sequence

from resnet_jax.commands import ArgumentParser

import resnet_jax.data as rjd
from resnet_jax.data import cifar
from resnet_jax.data.prepare import split_sizes


def main(argv: Sequence[str]) -> int:
  p = ArgumentParser(prog="resnet-jax prepare",
                              description="Prepare a TFDS dataset (ArrayRecord) without TensorFlow.")
  p.add_argument("name", help="dataset, e.g. cifar10, cifar100, imagenet2012")
  p.add_argument("--source", default=None, help="official files (folder or archive); "
                 "omitted: download the official archive")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  p.add_argument("--allow-partial", action="store_true",
                 help="prepare CIFAR files that hold fewer records than the official ones (a subset)")
  args = p.parse_args(argv)
  path = rjd.prepare(args.name, args.source, args.data_dir, allow_partial=args.allow_partial)
  sizes = split_sizes(path)
  listed = ", ".join(f"{n:,} {split}" for split, n in sorted(sizes.items(), reverse=True))
  print(f"prepared {args.name} in {path} ({listed} images)")
  official = cifar.SPLIT_SIZES.get("test") if args.name in cifar.OFFICIAL_RECORDS else None
  if official and sizes.get("test", official) < official:
    print(f"note: the test split holds {sizes['test']:,} of the official {official:,} images; "
          "evaluations on it report error on those")
  return 0
