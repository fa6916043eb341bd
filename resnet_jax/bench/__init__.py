"""`resnet-jax bench`: train-step throughput, the input pipeline's cost, and a minimal Flax reference.

  resnet-jax bench --model resnet50 --batch 256 --dtype bfloat16
  resnet-jax bench --config cifar10_resnet56 --data real --steps-per-dispatch 1 50 --steps 100
  resnet-jax bench --config cifar10_resnet20 --compare-minimal --steps 10 --windows 3   # CPU
  resnet-jax bench --config cifar10_resnet20 --bn global --compare-torch --steps 10   # vs PyTorch

Reports, per candidate, images/s and ms/step (median and spread over interleaved timed
windows, after compilation and warm-up, with device synchronisation), the compile time
of the first step, peak device memory where the backend reports it, the network's
multiply-adds and the achieved TFLOP/s (6 × MACs per image: forward and backward).
Candidates: our train step for each `--steps-per-dispatch` K on one fixed batch already
on the devices (`step K=..`); with `--compare-minimal` a minimal Flax step of the same
network (`minimal.py`); with `--compare-torch` the PyTorch eager step of the same network
(`torch_reference.py`; needs torch, otherwise the report says so in one line); with
`--data real` the engine's per-step path with the real input pipeline, host (Grain) and
device-resident (`loop/host`, `loop/device`), and its overhead over the bare step. The last line with `--json` is one JSON object.
"""
from resnet_jax.bench.command import main, parse_args, run

__all__ = ["main", "parse_args", "run"]
