"""Arguments, config and report of `resnet-jax bench` (see the package docstring)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections

from resnet_jax import errors
from resnet_jax import configs, models
from resnet_jax.bench import breakdown, runner, torch_reference
from resnet_jax.runtime import compilation_cache
from resnet_jax.runtime.cpu_notice import describe_duration
from resnet_jax.train import build
from resnet_jax.train import config as config_lib

DATA = ("synthetic", "real")
PLACEMENTS = ("both", "host", "device")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="resnet-jax bench", description=sys.modules[__package__].__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=None, help="a registered network (`resnet-jax models`); with "
                 "--config it replaces the config's network, alone it takes cifar10_resnet20's recipe "
                 "for CIFAR networks and imagenet_resnet50's otherwise")
  p.add_argument("--config", default=None, help="config name or path, NAME:smoke for the tiny variant")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--dtype", default=None, help="compute dtype: float32 | bfloat16")
  p.add_argument("--bn", default=None, help="BatchNorm statistics: global | per_device | ghost")
  p.add_argument("--data", default="synthetic", help="synthetic (random uint8 images on device) | real "
                 "(the config's dataset, prepared; adds the input pipeline's cost)")
  p.add_argument("--placement", default="both", help="--data real: where train batches are assembled: "
                 "both | host | device")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the prepared dataset")
  p.add_argument("--steps-per-dispatch", type=int, nargs="+", default=[1], metavar="K",
                 help="steps per dispatch (lax.scan); several values are timed side by side")
  p.add_argument("--steps", type=int, default=20, help="train steps per timed window (a multiple of each K)")
  p.add_argument("--windows", type=int, default=3, help="timed windows per candidate; the median is reported")
  p.add_argument("--warmup", type=int, default=2, help="untimed dispatches per candidate after compiling")
  p.add_argument("--compare-minimal", action="store_true", help="also time a minimal Flax step of the "
                 "same network (plain jax.jit, Optax SGD) in the same windows")
  p.add_argument("--pack", type=int, nargs="+", default=[], metavar="R",
                 help="also time R runs packed in one program (one step trains R runs, each its own batch), "
                      "for each R given, e.g. --pack 1 2 4 8: per-run and total img/s")
  p.add_argument("--breakdown", action="store_true", help="also time the step without each of the "
                 "engine's extras (ghost BN, unbiased running variance, on-device augmentation, NaN guard, "
                 "metric sums) and without all of them, and print what each costs")
  p.add_argument("--compare-torch", action="store_true", help="also time the PyTorch eager step of "
                 "the same network (channels_last, all cores, BatchNorm over the whole batch: compare "
                 "with --bn global) in the same windows; needs torch (the [reference] extra)")
  p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any config field")
  p.add_argument("--no-compilation-cache", action="store_true", help="compile from scratch (the "
                 "persistent cache is on by default; see resnet_jax.runtime.compilation_cache)")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  return p.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
  """One-line errors for bad arguments, before anything is built."""
  if args.model is None and args.config is None:
    raise errors.InputError("give --model NAME (`resnet-jax models` lists them) or --config NAME")
  if args.model is not None:
    models.config(args.model)  # unknown: "unknown model 'x' (did you mean ...); valid names: ..."
  if args.data not in DATA:
    raise errors.InputError(f"--data {args.data!r} is not one of {', '.join(DATA)}")
  if args.placement not in PLACEMENTS:
    raise errors.InputError(f"--placement {args.placement!r} is not one of {', '.join(PLACEMENTS)}")
  if args.dtype is not None and args.dtype not in config_lib.DTYPE_NAMES:
    raise errors.InputError(f"--dtype {args.dtype!r} is not one of {', '.join(config_lib.DTYPE_NAMES)}")
  if args.bn is not None and args.bn not in config_lib.BN_MODES:
    raise errors.InputError(f"--bn {args.bn!r} is not one of {', '.join(config_lib.BN_MODES)}")
  for name in ("steps", "windows"):
    if getattr(args, name) < 1:
      raise errors.InputError(f"--{name} {getattr(args, name)} must be at least 1")
  if args.warmup < 0:
    raise errors.InputError(f"--warmup {args.warmup} must be at least 0")
  if any(r < 1 for r in args.pack):
    raise errors.InputError(f"--pack {' '.join(map(str, args.pack))}: every R must be at least 1")
  if args.batch is not None and args.batch < 1:
    raise errors.InputError(f"--batch {args.batch} must be at least 1")
  for k in args.steps_per_dispatch:
    if k < 1 or args.steps % k:
      raise errors.InputError(f"--steps-per-dispatch {k}: must be at least 1 and divide --steps {args.steps}")


def build_config(args: argparse.Namespace):
  """The config to benchmark: --config (or a default recipe for --model) with the flags applied."""
  spec = args.config
  if spec is None:
    spec = "cifar10_resnet20" if models.config(args.model).get("stem") == "cifar" else "imagenet_resnet50"
  config = configs.load(spec)
  if args.model is not None:
    config.model = ml_collections.ConfigDict({"name": args.model})
  overrides: Dict[str, Any] = {}
  if args.batch is not None:
    overrides["global_batch_size"] = args.batch
  if args.dtype is not None:
    overrides["dtype"] = args.dtype
  if args.bn is not None:
    overrides["bn.mode"] = args.bn
  if args.data_dir is not None:
    overrides["data.data_dir"] = args.data_dir
  config = config_lib.apply_overrides(config, overrides)
  if args.set:
    config = config_lib.parse_assignments(config, args.set)
  if config.bn.mode == "ghost" and config.global_batch_size % config.bn.ghost_batch_size:
    config.bn.ghost_batch_size = config.global_batch_size  # a --batch below the groups: one group
  build.validate(config)
  return config, spec


def _candidates(args: argparse.Namespace, config, bench, ks: List[int]):
  """(every candidate to time, the breakdown's variants, the torch note, the data placements)."""
  candidates = [bench.step_candidate(k) for k in ks]
  if args.compare_minimal:
    candidates.append(bench.minimal_candidate())
  candidates += [bench.packed_candidate(r) for r in dict.fromkeys(args.pack)]
  variants = breakdown.variants(config) if args.breakdown else {}
  for name, (variant_config, extras) in variants.items():
    candidates.append(runner.Bench(variant_config, args.data, extras).step_candidate(ks[0], name=name))
  torch_note = None
  if args.compare_torch:
    torch_note = torch_reference.available()
    if torch_note is None:
      candidates.append(runner.torch_candidate(bench))
  placements: List[str] = []
  if args.data == "real":
    placements = ["host", "device"] if args.placement == "both" else [args.placement]
    if args.placement == "both" and bench.pipeline.dataset.train_arrays() is None:
      placements = ["host"]
    candidates += [bench.loop_candidate(k, p) for k in ks for p in placements]
  return candidates, variants, torch_note, placements


def _ratios(args, candidates, ks: List[int], first: str, torch_note, placements, variants) -> Dict[str, Any]:
  """Each comparison the flags ask for, as the median ratio of the candidates' times and its rounds."""
  ratios = {}
  for k in ks[1:]:
    ratios[f"step K={k} / step K={ks[0]}"] = runner.ratio(candidates, f"{runner.STEP_NAME} K={k}", first)
  if args.compare_minimal:
    ratios[f"step K={ks[0]} / minimal flax"] = runner.ratio(candidates, first, "minimal flax")
  if args.compare_torch and torch_note is None:
    ratios[f"step K={ks[0]} / {runner.TORCH_NAME}"] = runner.ratio(candidates, first, runner.TORCH_NAME)
  for k in ks:
    for p in placements:
      ratios[f"loop/{p} K={k} / step K={k}"] = runner.ratio(candidates, f"loop/{p} K={k}",
                                                            f"{runner.STEP_NAME} K={k}")
  for r in dict.fromkeys(args.pack):  # images per second of R packed runs over one run's step
    x = runner.ratio(candidates, f"packed R={r}", first)
    ratios[f"packed R={r} / {first} (images)"] = {"median": x["median"] * r, "rounds": [v * r for v in x["rounds"]]}
  if variants and args.compare_minimal:
    ratios[f"{breakdown.ALL_OFF} / minimal flax"] = runner.ratio(candidates, breakdown.ALL_OFF, "minimal flax")
  return ratios


def run(args: argparse.Namespace) -> Dict[str, Any]:
  """Builds, compiles and times every candidate; returns the report as a dict."""
  _check(args)
  cache = None if args.no_compilation_cache else compilation_cache.enable()
  if args.no_compilation_cache:
    jax.config.update("jax_enable_compilation_cache", False)
  config, spec = build_config(args)
  bench = runner.Bench(config, args.data)
  ks: List[int] = list(dict.fromkeys(args.steps_per_dispatch))
  candidates, variants, torch_note, placements = _candidates(args, config, bench, ks)
  runner.measure(candidates, args.steps, args.windows, args.warmup)
  batch = int(config.global_batch_size)
  macs = models.flops(bench.model, (1, *bench.image_shape))
  results = runner.summary(candidates, args.steps, batch, macs)
  first = f"{runner.STEP_NAME} K={ks[0]}"
  ratios = _ratios(args, candidates, ks, first, torch_note, placements, variants)
  extra_costs = breakdown.costs({c.name: c.seconds for c in candidates if c.name in variants or c.name == first},
                                first)
  img_s = results[first]["img_per_s"]
  device = jax.devices()[0]
  return {
      "config": spec, "model": config.model.name, "dataset": config.data.name, "data": args.data,
      "params": models.count_params({"params": bench.state0.params}), "macs_per_image": macs,
      "minimal_params": getattr(bench, "minimal_params", None),
      "torch_params": getattr(bench, "torch_params", None), "torch_note": torch_note,
      "image_shape": list(bench.image_shape), "global_batch": batch, "dtype": config.dtype,
      "bn_mode": config.bn.mode, "devices": jax.device_count(), "platform": device.platform,
      "device_kind": device.device_kind, "jax": jax.__version__, "steps_per_window": args.steps,
      "windows": args.windows, "warmup": args.warmup, "compilation_cache": cache,
      "results": results, "ratios": ratios, "img_per_s": img_s, "ms_per_step": results[first]["ms_per_step"],
      "compile_s": results[first]["compile_s"], "peak_memory_bytes": runner.peak_memory_bytes(),
      "epoch_s": bench.info.num_train_examples / img_s, "schedule_steps": bench.total_steps,
      "schedule_s": bench.total_steps * batch / img_s,
      "breakdown": {name: {"cost_of_step": cost, "what": breakdown.EXTRAS[name[len("step -"):]].what
                           if name.startswith("step -") else "every extra above"}
                    for name, cost in extra_costs.items()},
  }


def report(r: Dict[str, Any]) -> str:
  """The human-readable table of `run`'s result."""
  mem = r["peak_memory_bytes"]
  lines = [f"{r['model']} ({r['params']:,} params, {r['macs_per_image'] / 1e9:.3f} GMACs/img, "
           f"{'x'.join(map(str, r['image_shape']))}), batch {r['global_batch']}, {r['dtype']}, "
           f"bn={r['bn_mode']}, {r['data']} data, on {r['devices']} x {r['device_kind']} "
           f"({r['platform']}), jax {r['jax']}",
           f"  {r['windows']} interleaved windows of {r['steps_per_window']} steps after {r['warmup']} "
           f"warm-up dispatches; compilation cache: {r['compilation_cache'] or 'off'}",
           f"  {'candidate':<22} {'img/s':>10} {'ms/step':>9} {'(min-max)':>17} {'TFLOP/s':>8} "
           f"{'compile':>9} {'CPU ms/step':>12}"]
  for name, x in r["results"].items():
    compile_s = "-" if x["compile_s"] is None else f"{x['compile_s']:.1f} s"
    spread = f"({x['ms_per_step_min']:.2f}-{x['ms_per_step_max']:.2f})"
    lines.append(f"  {name:<22} {x['img_per_s']:>10,.0f} {x['ms_per_step']:>9.2f} {spread:>17} "
                 f"{x['tflops']:>8.3f} {compile_s:>9} {x['cpu_ms_per_step']:>12.1f}")
  for name, x in r["ratios"].items():
    rounds = ", ".join(f"{v:.3f}" for v in x["rounds"])
    extra = ""
    if name.startswith("loop/"):
      extra = f"  (loop overhead over the bare step: {100 * (1 / x['median'] - 1):+.1f} %)"
    lines.append(f"  speed {name}: {x['median']:.3f} (rounds: {rounds}){extra}")
  for name, x in r["results"].items():
    if x.get("runs", 1) > 1 or name.startswith("packed"):
      lines.append(f"  {name}: {x['runs']} runs in one program, {x['img_per_s_per_run']:,.0f} img/s per run, "
                   f"{x['img_per_s']:,.0f} img/s in all")
  if r.get("breakdown"):
    lines.append("  what the engine's extras cost (share of the full step's time, median of rounds):")
    for name, x in r["breakdown"].items():
      lines.append(f"    {name:<24} {100 * x['cost_of_step']:+6.1f} %   {x['what']}")
  if r.get("torch_note"):
    lines.append(f"  --compare-torch: not timed: {r['torch_note']}")
  elif r.get("torch_params") is not None and r["bn_mode"] != "global":
    lines.append(f"  pytorch eager normalises over the whole batch; ours here: bn={r['bn_mode']} "
                 "(--bn global for the same BatchNorm)")
  memory = "not reported by the backend" if mem is None else f"{mem / 2**30:.2f} GiB"
  lines.append(f"  peak device memory: {memory}")
  lines.append(f"  at {r['img_per_s']:,.0f} img/s: one {r['dataset']} epoch {r['epoch_s']:,.0f} s, the "
               f"config's {r['schedule_steps']:,} steps {describe_duration(r['schedule_s'])} (bare step)")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(list(sys.argv[1:] if argv is None else argv))
  result = run(args)
  print(report(result), flush=True)
  if args.json:
    print(json.dumps(result, sort_keys=True), flush=True)
  return 0
