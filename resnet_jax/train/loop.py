"""The training loop: data-parallel steps, periodic eval, checkpoints, preemption and NaN guard."""
from __future__ import annotations

import functools
import logging
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from resnet_jax import models
from resnet_jax.train import build
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import config as config_lib
from resnet_jax.train import cpu_notice
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib
from resnet_jax.train import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(RuntimeError):
  """The training loss or gradient became NaN or Inf; the run stops instead of continuing."""


class Preemption:
  """SIGTERM (a preempted TPU VM, `scancel`, SLURM's time limit) and SIGINT (Ctrl-C) as a
  flag the loop polls: the run saves a checkpoint at the next step and exits.

  A second Ctrl-C stops at once (Python's KeyboardInterrupt), losing the steps since the
  last checkpoint. With several processes JAX's preemption service (started by
  `jax.distributed.initialize`) receives SIGTERM and agrees on a common step, so every
  process saves the same checkpoint.
  """

  def __init__(self):
    self.multiprocess = mesh_lib.is_multiprocess()
    self.requested = False
    self.signal_name = "SIGTERM"
    self._previous = {}

  def start(self) -> None:
    """Listens for SIGTERM and SIGINT from now on (a single process, main thread)."""
    if threading.current_thread() is not threading.main_thread():
      return
    if self.multiprocess:  # a signal on one process must not make it save alone (saves are collective)
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    # No printing here: a signal can arrive inside a print (a reentrant write fails).
    if signum == signal.SIGINT and self.requested:  # the second Ctrl-C: stop now
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name

  def reached(self, counter: int) -> bool:
    if self.multiprocess:
      try:
        return multihost_utils.reached_preemption_sync_point(counter)
      except RuntimeError:  # preemption service disabled
        return False
    return self.requested

  def close(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


def _fetch(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def ten_crop(pipe) -> bool:
  """Whether the pipeline's eval batches are 10-crop squares (`data.ten_crop`)."""
  return bool(pipe.config.get("ten_crop", False))


def make_eval_step(model, mesh: Mesh, pipe):
  """The eval step for `pipe`'s batches (10-crop evaluation when `data.ten_crop` is set)."""
  return step_lib.make_eval_step(model, mesh, pipe.preprocess, pipe.num_classes,
                                 ten_crop_size=pipe.image_shape[0] if ten_crop(pipe) else None)


def evaluate_params(eval_step, state_params, state_batch_stats, pipe, mesh: Mesh) -> Dict[str, float]:
  """Error, top-5 error (percent), mean loss and example count over the whole eval split.

  With `data.ten_crop`, `error` is the single center crop and `ten_crop_error` /
  `ten_crop_top5_error` / `ten_crop_loss` those of the averaged 10-crop softmax.
  """
  sums = step_lib.new_metrics(functools.partial(step_lib.zero_eval_metrics, ten_crop=ten_crop(pipe)), mesh)
  for batch in pipe.eval_iterator():
    sums = eval_step(state_params, state_batch_stats, sums, batch)
  sums = _fetch(sums)
  count = float(sums["count"])
  if count == 0:
    raise ValueError("the eval split is empty")
  out = {}
  for prefix in ("", step_lib.TEN_CROP_PREFIX) if ten_crop(pipe) else ("",):
    out.update({f"{prefix}error": 100.0 * float(sums[f"{prefix}errors"]) / count,
                f"{prefix}top5_error": 100.0 * float(sums[f"{prefix}top5_errors"]) / count,
                f"{prefix}loss": float(sums[f"{prefix}loss"]) / count})
  return {**out, "num_examples": int(count)}


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
          mesh: Optional[Mesh] = None, config_spec: Optional[str] = None) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns the last train and eval metrics, the final step and whether the run
  stopped early on SIGTERM (`preempted`). `config_spec` (the `--config` value) names the
  config in the commands of the CPU-only notice (`cpu_notice`).
  """
  workdir = pathlib.Path(workdir).absolute()
  config_lib.validate(config)
  # One writer per workdir, and a layout this version reads (before anything is written).
  workdir_lock = workdir_lib.lock(workdir) if jax.process_index() == 0 else None
  try:
    return _train(config, workdir, mesh, config_spec)
  finally:
    if workdir_lock is not None:
      workdir_lock.release()


def _check_resumable(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Refuses to resume a run's checkpoints with a changed recipe (see `workdir.config_changes`)."""
  try:
    saved = config_lib.load_config(workdir)
  except FileNotFoundError:
    return
  changes = workdir_lib.config_changes(saved, config)
  if config.schedule.name != "cosine" and saved.get("schedule", {}).get("name") == config.schedule.name:
    # Only the cosine schedule depends on the training length: a step or constant run may be
    # extended (or cut short) without changing any step already taken.
    changes = [c for c in changes if c[0] not in ("num_steps", "num_epochs")]
  if changes:
    raise workdir_lib.ConfigChangedError(
        f"{workdir} holds checkpoints of a run with another config: "
        f"{workdir_lib.describe_changes(changes)} (saved -> requested). Resume with the saved config "
        f"({workdir / config_lib.CONFIG_FILE}), train in a new --workdir, or start a new run from its "
        f"weights: --config.init_from={workdir}")


def _init_from(config: ml_collections.ConfigDict, state: state_lib.TrainState, mesh: Mesh,
               image_shape, num_classes: int) -> Tuple[state_lib.TrainState, str]:
  """`state` with params and BN statistics of the run `config.init_from` (same network)."""
  path, step = config_lib.parse_init_from(config.init_from)
  other_model, variables = load_variables(path, step)
  if other_model.num_classes != num_classes:
    raise ckpt_lib.CheckpointMismatchError(
        f"init_from={config.init_from!r}: that run's network has {other_model.num_classes} classes, this "
        f"dataset {num_classes}")
  ours = ckpt_lib.fingerprint({}, num_classes, image_shape, {"params": state.params,
                                                             "batch_stats": state.batch_stats})
  theirs = ckpt_lib.fingerprint({}, num_classes, image_shape, {"params": variables["params"],
                                                               "batch_stats": variables.get("batch_stats", {})})
  problem = ckpt_lib.describe_mismatch(theirs, ours, ckpt_lib.VARIABLE_KEYS)
  if problem:
    raise ckpt_lib.CheckpointMismatchError(f"init_from={config.init_from!r} is another network: {problem}")
  replicated = mesh_lib.replicated(mesh)
  params = jax.device_put(jax.tree.map(jnp.asarray, variables["params"]), replicated)
  batch_stats = jax.device_put(jax.tree.map(jnp.asarray, variables.get("batch_stats", {})), replicated)
  return state.replace(params=params, batch_stats=batch_stats), f"{path} ({'latest' if step is None else step})"


def _last_train_record(workdir: pathlib.Path) -> Dict[str, float]:
  records = [r for r in metrics_lib.read_metrics(workdir) if r.get("kind") == "train"]
  return {k: v for k, v in records[-1].items() if k not in ("step", "kind", "time")} if records else {}


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: Optional[Mesh],
           config_spec: Optional[str] = None) -> Dict[str, Any]:
  workdir_lib.check_format(workdir, write=jax.process_index() == 0)
  exp = build.experiment(config, mesh)
  mesh, pipe, model, schedule, tx = exp.mesh, exp.pipeline, exp.model, exp.schedule, exp.tx
  steps_per_epoch, total_steps, image_shape = exp.steps_per_epoch, exp.total_steps, exp.image_shape
  abstract_state = state_lib.abstract_train_state(model, tx, mesh, image_shape, config.seed)
  meta = ckpt_lib.fingerprint(dict(config.model), pipe.num_classes, image_shape, abstract_state)
  replicated = mesh_lib.replicated(mesh)

  checkpointer = ckpt_lib.Checkpointer(workdir / CHECKPOINT_DIR, keep=config.keep_checkpoints,
                                       keep_best=config.keep_best_checkpoints,
                                       async_save=config.async_checkpoints)
  if checkpointer.latest_step() is not None:
    try:
      _check_resumable(config, workdir)
    except BaseException:
      checkpointer.close()
      raise
  writer = metrics_lib.MetricWriter(workdir)
  preemption = Preemption()
  sessions = metrics_lib.SessionLog(workdir)
  step = 0
  end_reason = "error"
  state = None
  try:
    train_iter = pipe.train_iterator()
    abstract_sums = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                                 jax.eval_shape(step_lib.zero_train_metrics))
    restored = checkpointer.restore_newest(abstract_state, abstract_sums, meta, log=writer.print,
                                           set_aside=jax.process_index() == 0)
    resumed_from = None
    if restored is not None:
      restored_step, state, sums, data_state = restored
      train_iter.set_state(data_state)
      resumed_from = str(checkpointer.directory / str(restored_step))
      writer.print(f"resumed from {resumed_from}")
    else:
      state = state_lib.create_train_state(model, tx, mesh, image_shape, config.seed)
      sums = step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
      if config.get("init_from"):
        state, source = _init_from(config, state, mesh, image_shape, pipe.num_classes)
        writer.print(f"initialised params and BatchNorm statistics from {source}")
    if jax.process_index() == 0:
      config_lib.save_config(config, workdir)

    k = int(config.steps_per_dispatch)
    train_step = step_lib.make_train_step(model, tx, config, mesh, pipe.preprocess, pipe.num_classes)
    multi_step = (step_lib.make_train_step(model, tx, config, mesh, pipe.preprocess, pipe.num_classes,
                                           steps_per_call=k) if k > 1 else None)
    eval_step = make_eval_step(model, mesh, pipe)
    eval_every = steps_per_epoch * int(config.eval_every_epochs)

    step = int(jax.device_get(state.step))
    sessions.start(step, resumed_from)
    writer.print(f"{config.model.name}: {models.count_params({'params': state.params}):,} params, "
                 f"{jax.device_count()} devices in {jax.process_count()} processes, bn={config.bn.mode}, "
                 f"batch {config.global_batch_size}, {steps_per_epoch} steps/epoch, "
                 f"steps {step}->{total_steps}")
    preemption.start()
    notice = cpu_notice.CpuNotice(total_steps, config.global_batch_size, writer.print, config_spec)
    last_train: Dict[str, float] = {}
    last_eval: Dict[str, float] = {}
    window_start, window_step = time.perf_counter(), step
    dispatches = 0
    preempted = False

    def check_finite(current_sums) -> None:
      bad = int(jax.device_get(current_sums["first_nonfinite_step"]))
      if bad >= 0:
        good = checkpointer.latest_step()
        where = (f"last good checkpoint: {checkpointer.directory / str(good)} (step {good})"
                 if good is not None else "no checkpoint was saved before it")
        raise NonFiniteLossError(
            f"training loss or gradient is NaN/Inf at step {bad + 1}; stopped. {where}. "
            "Lower optimizer.learning_rate or add schedule.warmup_length.")

    def save(current_state, current_sums, eval_metrics=None) -> None:
      check_finite(current_sums)
      checkpointer.save(step, current_state, current_sums, train_iter.get_state(), meta, eval_metrics)

    if step >= total_steps:  # finished earlier: report its final evaluation again
      last_eval = checkpointer.eval_metrics(step) if step == total_steps else {}
      if not {"error", "top5_error", "loss", "num_examples"} <= set(last_eval):
        last_eval = evaluate_params(eval_step, state.params, state.batch_stats, pipe, mesh)
      last_eval["num_examples"] = int(last_eval["num_examples"])
      last_train = _last_train_record(workdir)
      writer.print(f"already finished at step {step} of {total_steps}: eval error {last_eval['error']:.2f}% | "
                   f"top-5 {last_eval['top5_error']:.2f}% | {last_eval['num_examples']} images of "
                   f"{config.data.eval_split}")

    while step < total_steps:
      events = [total_steps, (step // config.log_every_steps + 1) * config.log_every_steps,
                (step // config.checkpoint_every_steps + 1) * config.checkpoint_every_steps,
                (step // eval_every + 1) * eval_every]
      if multi_step is not None and min(events) - step >= k:
        state, sums = multi_step(state, sums, train_iter.take(k))
        step += k
      else:
        state, sums = train_step(state, sums, next(train_iter))
        step += 1
      dispatches += 1
      notice.after_step(step, state)

      if step % config.log_every_steps == 0 or step == total_steps:
        host = _fetch(sums)
        sums = step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
        if int(host["first_nonfinite_step"]) >= 0:
          check_finite(host)
        n = max(int(host["steps"]), 1)
        now = time.perf_counter()
        images_per_sec = (step - window_step) * config.global_batch_size / max(now - window_start, 1e-9)
        steps_per_sec = (step - window_step) / max(now - window_start, 1e-9)
        last_train = {"loss": float(host["loss"]) / n, "error": 100.0 * float(host["error"]) / n,
                      "learning_rate": float(schedule(jnp.asarray(step - 1))),
                      "images_per_sec": images_per_sec, "epoch": step / steps_per_epoch}
        writer.write(step, last_train, "train")
        eta = metrics_lib.format_duration((total_steps - step) / max(steps_per_sec, 1e-9))
        writer.print(f"step {step}/{total_steps} | epoch {step / steps_per_epoch:.2f} | "
                     f"loss {last_train['loss']:.4f} | train error {last_train['error']:.2f}% | "
                     f"lr {last_train['learning_rate']:.4g} | {images_per_sec:.0f} img/s | ETA {eta}")
        window_start, window_step = now, step

      if step % eval_every == 0 or step == total_steps:
        check_finite(sums)
        last_eval = evaluate_params(eval_step, state.params, state.batch_stats, pipe, mesh)
        eval_metrics = dict(last_eval)  # stored with the checkpoint: error ranks it, all of it is reported
        writer.write(step, {**last_eval, "epoch": step / steps_per_epoch}, "eval")
        ten = (f"10-crop error {last_eval['ten_crop_error']:.2f}% | top-5 {last_eval['ten_crop_top5_error']:.2f}% | "
               if "ten_crop_error" in last_eval else "")
        writer.print(f"eval step {step} | epoch {step / steps_per_epoch:.2f} | "
                     f"error {last_eval['error']:.2f}% | top-5 {last_eval['top5_error']:.2f}% | {ten}"
                     f"loss {last_eval['loss']:.4f} | {last_eval['num_examples']} images of {config.data.eval_split}")
        save(state, sums, eval_metrics)
      elif step % config.checkpoint_every_steps == 0:
        save(state, sums)

      if step < total_steps and preemption.reached(dispatches):
        save(state, sums)
        checkpointer.wait()
        cause = "interrupted (Ctrl-C)" if preemption.signal_name == "SIGINT" else "preempted"
        writer.print(f"{cause}: saved step {step} to {checkpointer.directory}; "
                     "run the same command again to resume")
        preempted = True
        break
    checkpointer.wait()
    end_reason = "preempted" if preempted else "finished"
  except BaseException as e:
    end_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    raise
  finally:
    sessions.end(step, int(config.global_batch_size), end_reason)
    preemption.close()
    try:
      checkpointer.close()
    except ckpt_lib.CheckpointWriteError:
      if end_reason in ("finished", "preempted"):  # else the error in flight says more
        raise
    finally:
      writer.close()
  return {"step": step, "train": last_train, "eval": last_eval, "preempted": preempted,
          "state": state}


def _resolve_step(checkpointer: ckpt_lib.Checkpointer, step: Optional[int | str]) -> int:
  if step is None or step == "latest":
    found = checkpointer.latest_step()
  elif step == "best":
    found = checkpointer.best_step()
  else:
    found = int(step)
    if found not in checkpointer.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {found} in {checkpointer.directory}; "
                              f"saved steps: {sorted(checkpointer.manager.all_steps())}")
  if found is None:
    raise FileNotFoundError(f"no {'evaluated ' if step == 'best' else ''}checkpoint in "
                            f"{checkpointer.directory}")
  return int(found)


def load_variables(workdir: str | pathlib.Path, step: Optional[int | str] = None,
                   config: Optional[ml_collections.ConfigDict] = None,
                   log: Callable[[str], None] = logging.warning
                   ) -> Tuple[models.ResNet, Dict[str, Any]]:
  """The trained network of a `train` run and its `{"params", "batch_stats"}`, for inference.

  Restores only the parameters and BatchNorm statistics (an Orbax partial restore), so
  neither the optimiser nor the dataset is needed. `step`: a saved step, `"latest"`
  (default) or `"best"` (the kept checkpoint with the lowest eval error). For `"latest"`,
  an unreadable checkpoint is reported through `log` and the next older one is used.

  >>> model, variables = rj.train.load_variables("runs/cifar10_resnet20", step="best")
  >>> logits = model.apply(variables, images, train=False)
  """
  model, variables, _ = _load_variables(workdir, step, config, log)
  return model, variables


def _load_variables(workdir, step, config, log) -> Tuple[models.ResNet, Dict[str, Any], int]:
  workdir = pathlib.Path(workdir).absolute()
  workdir_lib.check_format(workdir)
  config = config_lib.load_config(workdir) if config is None else config
  checkpointer = ckpt_lib.Checkpointer(workdir / CHECKPOINT_DIR, keep=config.keep_checkpoints,
                                       keep_best=config.keep_best_checkpoints, async_save=False,
                                       create=False)
  try:
    newest = step is None or step == "latest"
    candidates = (sorted(checkpointer.manager.all_steps(), reverse=True) if newest
                  else [_resolve_step(checkpointer, step)])
    if not candidates:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
    unreadable = []
    for found in candidates:
      try:
        saved = checkpointer.read_meta(found)
        num_classes, image_shape = int(saved["num_classes"]), tuple(saved["image_shape"])
        model = build.model(config, num_classes)
        abstract = models.abstract_variables(model, (1, *image_shape))
        meta = ckpt_lib.fingerprint(dict(config.model), num_classes, image_shape, dict(abstract))
        variables = checkpointer.restore_variables(found, dict(abstract), meta)
      except (ckpt_lib.CheckpointMismatchError, config_lib.ConfigError):
        raise
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
        if not newest:
          raise ckpt_lib.UnreadableCheckpointError(
              f"checkpoint {checkpointer.directory / str(found)} is unreadable ({ckpt_lib.one_line(e)})"
          ) from e
        unreadable.append(found)
        log(f"checkpoint {checkpointer.directory / str(found)} is unreadable ({ckpt_lib.one_line(e)}); "
            "trying the next older one")
        continue
      if unreadable:
        log(f"using step {found}, the newest readable checkpoint (unreadable: steps {unreadable})")
      break
    else:
      raise ckpt_lib.UnreadableCheckpointError(
          f"no checkpoint in {checkpointer.directory} is readable (steps {unreadable})")
  finally:
    checkpointer.close()
  if not variables["batch_stats"]:
    variables = {"params": variables["params"]}
  return model, variables, int(found)


def evaluate(workdir: str | pathlib.Path, step: Optional[int | str] = None, split: Optional[str] = None,
             mesh: Optional[Mesh] = None, log: Callable[[str], None] = logging.warning) -> Dict[str, Any]:
  """Evaluates a checkpoint of `workdir` (the latest by default, or `"best"`) on every
  example of a split.

  The split is the run's `data.eval_split` unless `split` is given.
  """
  workdir = pathlib.Path(workdir).absolute()
  config = config_lib.load_config(workdir)
  if split:
    config.data.eval_split = split
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  pipe = build.pipeline(config, mesh)
  model, variables, step = _load_variables(workdir, step, config, log)
  if model.num_classes != pipe.num_classes:
    raise ValueError(f"the checkpoint has {model.num_classes} classes but data.name="
                     f"{config.data.name!r} has {pipe.num_classes}")
  replicated = mesh_lib.replicated(mesh)
  params = jax.device_put(variables["params"], replicated)
  batch_stats = jax.device_put(variables.get("batch_stats", {}), replicated)
  eval_step = make_eval_step(model, mesh, pipe)
  result = evaluate_params(eval_step, params, batch_stats, pipe, mesh)
  return {"step": int(step), **result, "model": config.model.name, "split": config.data.eval_split}
