"""Train-step throughput and memory on synthetic data: the number to compare across machines.

Times the project's own jit-compiled train step (`resnet_jax.train.step`) on every local
device, with the optimizer, BatchNorm mode and dtype of a config, on random images already
on device, so the input pipeline is out of the measurement (`bench_data.py` measures that).

  python experiments/bench_train.py --config imagenet_resnet50 --batch 256 --dtype bfloat16
  python experiments/bench_train.py --config cifar10_resnet56 --batch 128 --steps-per-dispatch 50
  python experiments/bench_train.py --config cifar10_resnet20 --batch 32 --iters 5 --warmup 1   # CPU

Prints img/s (median over timed windows), ms/step, compile time, model MACs, the achieved
TFLOP/s (6 × MACs per image: forward and backward), peak device memory where the backend
reports it, and what one epoch and the config's full schedule would take at that speed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import resnet_jax.data as rjd
from resnet_jax import configs
from resnet_jax import models
from resnet_jax import train



def _identity_preprocess(images, rng, train):
  del rng, train
  return images


def peak_memory_bytes() -> int | None:
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="cifar10_resnet56", help="config name or path (see configs/)")
  p.add_argument("--model", default=None, help="override the config's network (a registry name)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--dtype", default=None, choices=sorted(train.build.DTYPES), help="compute dtype")
  p.add_argument("--bn", default=None, choices=train.BN_MODES, help="BatchNorm statistics mode")
  p.add_argument("--steps-per-dispatch", type=int, default=1, help="steps per jit call (lax.scan)")
  p.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling")
  p.add_argument("--iters", type=int, default=20, help="timed calls per window")
  p.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  args = p.parse_args()

  config = configs.load(args.config)
  overrides = {}
  if args.model:
    overrides["model.name"] = args.model
  if args.batch:
    overrides["global_batch_size"] = args.batch
  if args.dtype:
    overrides["dtype"] = args.dtype
  if args.bn:
    overrides["bn.mode"] = args.bn
  config = configs.apply_overrides(config, overrides)
  dataset = config.data.name
  info = rjd.dataset_info(dataset)
  num_classes = info.num_classes
  size = int(config.data.image_size)
  batch, k = int(config.global_batch_size), int(args.steps_per_dispatch)
  mesh = train.create_mesh()
  if batch % jax.device_count():
    raise SystemExit(f"error: --batch {batch} does not divide over {jax.device_count()} devices")

  model = train.build.model(config, num_classes)
  _, tx = train.build.optimizer(config, 1000, 100_000)
  state = train.create_train_state(model, tx, mesh, (size, size, 3), config.seed)
  sums = train.new_metrics(train.zero_train_metrics, mesh)
  train_step = train.make_train_step(model, tx, config, mesh, _identity_preprocess, num_classes,
                                     steps_per_call=k)
  dtype = train.build.compute_dtype(config)
  rng = np.random.default_rng(0)
  lead = (k,) if k > 1 else ()
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(*((None,) * len(lead)), train.DATA_AXIS))
  batch_data = {
      "image": jax.device_put(jnp.asarray(rng.standard_normal((*lead, batch, size, size, 3)), dtype), sharding),
      "label": jax.device_put(jnp.asarray(rng.integers(0, num_classes, (*lead, batch)), jnp.int32), sharding),
  }

  t0 = time.perf_counter()
  compiled = train_step.lower(state, sums, batch_data).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, sums = compiled(state, sums, batch_data)
  jax.block_until_ready(state)
  rates = []
  for _ in range(args.windows):
    t0 = time.perf_counter()
    for _ in range(args.iters):
      state, sums = compiled(state, sums, batch_data)
    jax.block_until_ready(state)
    rates.append(args.iters * k * batch / (time.perf_counter() - t0))
  img_s = statistics.median(rates)
  macs = models.flops(model, (1, size, size, 3))
  params = models.count_params({"params": state.params})
  steps_per_epoch = info.num_train_examples // batch
  total_steps = (config.num_steps if config.num_steps > 0
                 else int(round(config.num_epochs * steps_per_epoch)))
  result = {
      "config": args.config, "model": config.model.name, "params": params, "macs_per_image": macs,
      "global_batch": batch, "dtype": config.dtype, "bn_mode": config.bn.mode, "steps_per_dispatch": k,
      "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
      "img_per_s": img_s, "img_per_s_windows": rates, "ms_per_step": 1000.0 * batch / img_s,
      "compile_s": compile_s, "tflops": 6.0 * macs * img_s / 1e12,
      "peak_memory_bytes": peak_memory_bytes(),
      "epoch_s": info.num_train_examples / img_s, "schedule_steps": total_steps,
      "schedule_s": total_steps * batch / img_s,
  }
  mem = result["peak_memory_bytes"]
  print(f"{config.model.name} ({params:,} params, {macs / 1e9:.3f} GMACs/img), batch {batch}, "
        f"{config.dtype}, bn={config.bn.mode}, {k} step(s)/dispatch on {jax.device_count()} x "
        f"{result['device_kind']}")
  print(f"  {img_s:,.0f} img/s (windows: {', '.join(f'{r:,.0f}' for r in rates)}), "
        f"{result['ms_per_step']:.2f} ms/step, {result['tflops']:.2f} TFLOP/s, compile {compile_s:.1f} s, "
        f"peak memory {'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'}")
  print(f"  one {dataset} epoch {result['epoch_s']:.0f} s; the config's {total_steps:,} steps "
        f"{result['schedule_s'] / 3600:.2f} h at this speed (input pipeline excluded)")
  if args.json:
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
