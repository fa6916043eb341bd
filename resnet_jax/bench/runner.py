"""`resnet-jax bench`: what decides training speed, measured side by side in one process.

Candidates are timed in interleaved windows (A, B, C, A, B, C, ...), so a machine whose
speed drifts (a shared CPU, a GPU warming up) affects them alike; ratios are the median
of per-round ratios. Each window runs `--steps` train steps after compilation and
`--warmup` untimed dispatches, and ends with `jax.block_until_ready` on the state.
Besides wall time each window records this process's CPU time (all its threads): on a
CPU backend shared with other jobs it varies less than wall time, and it counts the host
work of an input pipeline even where that work overlaps the device's.
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import errors
import resnet_jax.data as rjd
from resnet_jax import train
from resnet_jax.bench import minimal, torch_reference
from resnet_jax.data import augment
from resnet_jax.data import device_resident
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import ema as ema_lib
from resnet_jax.train import step as step_lib
from resnet_jax.train.step import StepExtras

STEP_NAME = "step"


@dataclasses.dataclass
class Candidate:
  """One thing to time: `window(steps)` runs `steps` train steps and waits for them."""
  name: str
  window: Callable[[int], None]
  steps_per_dispatch: int
  compile_s: Optional[float]
  runs: int = 1   # packed runs trained by each step (their images all count)
  seconds: List[float] = dataclasses.field(default_factory=list)
  cpu_seconds: List[float] = dataclasses.field(default_factory=list)  # this process, all threads


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)  # each candidate owns its (donated) state


def _synthetic_preprocess(config) -> Callable:
  """The on-device preprocessing the dataset would run (crop, flip, normalise), on made-up statistics."""
  data = config.data
  size = int(data.get("image_size", 32))
  if data.name in ("cifar10", "cifar100"):
    return functools.partial(augment.cifar_preprocess, mean=np.full((size, size, 3), 0.5, np.float32),
                             std=np.ones((3,), np.float32), augment=bool(data.augment),
                             padding=int(data.padding))
  if data.name == "imagenet2012":
    return functools.partial(augment.imagenet_preprocess, mean=augment.IMAGENET_MEAN,
                             std=augment.IMAGENET_STD, lighting=bool(data.get("pca_lighting", False)),
                             jitter=float(data.get("color_jitter", 0.0)))
  return lambda images, rng, train: augment.normalize(images, np.zeros((3,), np.float32),
                                                      np.full((3,), 255.0, np.float32))


def peak_memory_bytes() -> Optional[int]:
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  # backends without the call raise
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def _timed_compile(fn, *args):
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _stacked(batch: Dict[str, jax.Array], k: int, mesh) -> Dict[str, jax.Array]:
  sharding = NamedSharding(mesh, P(None, mesh_lib.DATA_AXIS))
  return jax.jit(lambda b: jax.tree.map(lambda x: jnp.stack([x] * k), b), out_shardings=sharding)(batch)


class Bench:
  """The network, optimiser and data of one config, and the candidates to time."""

  def __init__(self, config, data: str, extras: StepExtras = StepExtras()):
    self.config = config
    self.data = data
    self.extras = extras
    self.mesh = train.create_mesh()
    batch = int(config.global_batch_size)
    if batch % jax.device_count():
      raise errors.InputError(f"--batch {batch} does not divide over the {jax.device_count()} devices")
    self.info = rjd.dataset_info(config.data.name)
    if data == "real":
      self.pipeline = train.build.pipeline(config, self.mesh)
      self.num_classes, self.image_shape = self.pipeline.num_classes, tuple(self.pipeline.image_shape)
      self.preprocess = self.pipeline.preprocess
      self.batch = next(rjd.TrainIterator(self.pipeline.train_stream))
      self.steps_per_epoch = self.pipeline.steps_per_epoch
    else:
      self.pipeline = None
      size = int(config.data.get("image_size", self.info.image_shape[0]))
      self.num_classes, self.image_shape = self.info.num_classes, (size, size, self.info.image_shape[2])
      self.preprocess = _synthetic_preprocess(config)
      rng = np.random.default_rng(0)
      sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(train.DATA_AXIS))
      self.batch = {
          "image": jax.device_put(rng.integers(0, 256, (batch, *self.image_shape), np.uint8), sharding),
          "label": jax.device_put(rng.integers(0, self.num_classes, (batch,)).astype(np.int32), sharding)}
      self.steps_per_epoch = max(self.info.num_train_examples // batch, 1)
    self.total_steps = train.num_train_steps(config, self.steps_per_epoch)
    self.model = train.build.model(config, self.num_classes)
    _, self.tx = train.build.optimizer(config, self.steps_per_epoch, self.total_steps)
    self.state0 = train.create_train_state(self.model, self.tx, self.mesh, self.image_shape, config.seed,
                                           ema=ema_lib.enabled(config))
    self.steps: Dict[int, Any] = {}   # steps per dispatch -> (compiled step, compile seconds)

  def _new_sums(self):
    return train.new_metrics(train.zero_train_metrics, self.mesh)

  def compiled_step(self, k: int):
    """Our train step with `k` steps per dispatch, compiled once (timed)."""
    if k not in self.steps:
      fn = train.make_train_step(self.model, self.tx, self.config, self.mesh, self.preprocess,
                                 self.num_classes, steps_per_call=k, extras=self.extras)
      batch = self.batch if k == 1 else _stacked(self.batch, k, self.mesh)
      self.steps[k] = _timed_compile(fn, self.state0, self._new_sums(), batch)
    return self.steps[k]

  def step_candidate(self, k: int, name: Optional[str] = None) -> Candidate:
    """The bare step: one fixed batch already on the devices, no input pipeline."""
    compiled, compile_s = self.compiled_step(k)
    batch = self.batch if k == 1 else _stacked(self.batch, k, self.mesh)
    holder = {"state": _copy(self.state0), "sums": self._new_sums()}

    def window(steps: int) -> None:
      state, sums = holder["state"], holder["sums"]
      for _ in range(steps // k):
        state, sums = compiled(state, sums, batch)
      jax.block_until_ready(state)
      holder["state"], holder["sums"] = state, sums
    return Candidate(name or f"{STEP_NAME} K={k}", window, k, compile_s)

  def packed_candidate(self, runs: int) -> Candidate:
    """R runs trained together as the engine's group trains them on this platform
    (`train.packing.stacks_runs`): one stacked program on an accelerator, each run's own
    program in turn on a CPU; each run on its own copy of the batch."""
    if not train.packing.stacks_runs(self.mesh.devices.flat[0].platform):
      return self._separate_candidate(runs)
    name = f"packed R={runs}"
    stack = lambda tree: jax.tree.map(lambda *xs: jnp.stack(xs), *([tree] * runs))
    sharding = NamedSharding(self.mesh, P(None, mesh_lib.DATA_AXIS))
    batch = jax.jit(stack, out_shardings=sharding)(self.batch)
    new_state = lambda: jax.jit(stack, out_shardings=mesh_lib.replicated(self.mesh))(_copy(self.state0))
    new_sums = lambda: jax.jit(lambda: stack(train.zero_train_metrics()),
                               out_shardings=mesh_lib.replicated(self.mesh))()
    fn = step_lib.build_packed_train_step(self.model, [self.tx] * runs, self.config, self.mesh, self.preprocess,
                                          self.num_classes, extras=self.extras)
    compiled, compile_s = _timed_compile(fn, new_state(), new_sums(), batch)
    holder = {"state": new_state(), "sums": new_sums()}

    def window(steps: int) -> None:
      state, sums = holder["state"], holder["sums"]
      for _ in range(steps):
        state, sums = compiled(state, sums, batch)
      jax.block_until_ready(state)
      holder["state"], holder["sums"] = state, sums
    return Candidate(name, window, 1, compile_s, runs=runs)

  def _separate_candidate(self, runs: int) -> Candidate:
    """R runs, each with the one-run program, dispatched in turn (a CPU's group)."""
    compiled, compile_s = self.compiled_step(1)
    holders = [{"state": _copy(self.state0), "sums": self._new_sums()} for _ in range(runs)]

    def window(steps: int) -> None:
      for _ in range(steps):
        for h in holders:
          h["state"], h["sums"] = compiled(h["state"], h["sums"], self.batch)
      jax.block_until_ready([h["state"] for h in holders])
    return Candidate(f"packed R={runs}", window, 1, compile_s, runs=runs)

  def loop_candidate(self, k: int, placement: str) -> Candidate:
    """The engine's per-step path: next batch(es) from the pipeline, the dispatch, and the
    metrics fetch every `log_every_steps`, as in `train.train`."""
    compiled, _ = self.compiled_step(k)
    pipe = self.pipeline
    if placement == "device":
      arrays = pipe.dataset.train_arrays()
      if arrays is None:
        raise errors.InputError(f"--placement device: {pipe.config.name} is not held in memory as arrays")
      iterator = device_resident.DeviceResidentTrainIterator(pipe.train_stream, *arrays)
    else:
      iterator = rjd.TrainIterator(pipe.train_stream)
    holder = {"state": _copy(self.state0), "sums": self._new_sums(), "done": 0}
    log_every = int(self.config.log_every_steps)

    def window(steps: int) -> None:
      state, sums, done = holder["state"], holder["sums"], holder["done"]
      for _ in range(steps // k):
        batch = iterator.take(k) if k > 1 else next(iterator)
        state, sums = compiled(state, sums, batch)
        done += k
        if done % log_every < k:
          jax.device_get(sums)
          sums = self._new_sums()
      jax.block_until_ready(state)
      holder.update(state=state, sums=sums, done=done)
    return Candidate(f"loop/{placement} K={k}", window, k, None)

  def minimal_candidate(self) -> Candidate:
    """The minimal Flax step (`minimal.py`) of the same network, on the same batch."""
    net = minimal.like(self.model)
    step, tx = minimal.train_step(net, float(self.config.optimizer.learning_rate))
    variables, opt_state = minimal.init(net, tx, self.image_shape, int(self.config.seed))
    variables, opt_state = jax.device_put((variables, opt_state), mesh_lib.replicated(self.mesh))
    compiled, compile_s = _timed_compile(step, variables, opt_state, self.batch)
    holder = {"state": (variables, opt_state)}
    self.minimal_params = minimal.count_params(variables)

    def window(steps: int) -> None:
      variables, opt_state = holder["state"]
      for _ in range(steps):
        variables, opt_state, _ = compiled(variables, opt_state, self.batch)
      jax.block_until_ready(variables)
      holder["state"] = (variables, opt_state)
    return Candidate("minimal flax", window, 1, compile_s)


TORCH_NAME = "pytorch eager"


def torch_candidate(bench: "Bench") -> Candidate:
  """The PyTorch step of the same network on the same batch (`torch_reference.py`)."""
  opt = bench.config.optimizer
  if opt.get("weight_decay_mode", "coupled") != "coupled":
    raise errors.InputError("--compare-torch: PyTorch's SGD weight decay is coupled L2; the config's is "
                     f"{opt.weight_decay_mode}")
  batch = jax.device_get(bench.batch)
  window, module = torch_reference.candidate(
      minimal.like(bench.model), batch["image"], batch["label"], float(opt.learning_rate),
      float(opt.weight_decay), bool(opt.get("nesterov", False)), int(bench.config.seed))
  bench.torch_params = torch_reference.count_params(module)
  t0 = time.perf_counter()
  window(1)  # PyTorch has no compile step; its first step (allocations, oneDNN primitives)
  return Candidate(TORCH_NAME, window, 1, time.perf_counter() - t0)


def measure(candidates: Sequence[Candidate], steps: int, windows: int, warmup: int) -> None:
  """Warm-up dispatches, then `windows` rounds of one window per candidate, interleaved."""
  for c in candidates:
    c.window(warmup * c.steps_per_dispatch)
  for _ in range(windows):
    for c in candidates:
      t0, cpu0 = time.perf_counter(), time.process_time()
      c.window(steps)
      c.seconds.append(time.perf_counter() - t0)
      c.cpu_seconds.append(time.process_time() - cpu0)


def summary(candidates: Sequence[Candidate], steps: int, batch: int, macs: int) -> Dict[str, Any]:
  out = {}
  for c in candidates:
    rates = [steps * batch * c.runs / s for s in c.seconds]
    ms = [1000.0 * s / steps for s in c.seconds]
    img_s = statistics.median(rates)
    out[c.name] = {"img_per_s": img_s, "img_per_s_windows": rates, "ms_per_step": statistics.median(ms),
                   "ms_per_step_min": min(ms), "ms_per_step_max": max(ms),
                   "cpu_ms_per_step": statistics.median(1000.0 * s / steps for s in c.cpu_seconds),
                   "steps_per_dispatch": c.steps_per_dispatch, "compile_s": c.compile_s,
                   "tflops": 6.0 * macs * img_s / 1e12, "runs": c.runs, "img_per_s_per_run": img_s / c.runs}
  return out


def ratio(candidates: Sequence[Candidate], a: str, b: str) -> Dict[str, Any]:
  """Speed of `a` over `b` (>1: `a` is faster), per interleaved round and their median."""
  by_name = {c.name: c for c in candidates}
  rounds = [tb / ta for ta, tb in zip(by_name[a].seconds, by_name[b].seconds)]
  return {"median": statistics.median(rounds), "rounds": rounds}
