"""A trained run's network and weights, without its optimiser or data: inference, eval, `init_from`.

`load_network(WORKDIR)` gives everything inference needs (`trained.TrainedNetwork`):
the network, its parameters and BatchNorm statistics, and the eval-time preprocessing the run
recorded (`WORKDIR/preprocessing.json`); `load_variables` only the first two.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from resnet_jax import models
from resnet_jax.data import preprocessing as preprocessing_lib
from resnet_jax.runtime import object_store
from resnet_jax.train import build
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import config as config_lib
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import workdir as workdir_lib
from resnet_jax.train import workdir_io
from resnet_jax.train.trained import TrainedNetwork

CHECKPOINT_DIR = "checkpoints"
Variables = Dict[str, Any]


def best_checkpoint(checkpointer: ckpt_lib.Checkpointer) -> Tuple[int, float]:
  """(step, eval error) of the kept checkpoint with the lowest eval error.

  The error saved with each checkpoint decides; a checkpoint saved without one (the final
  save of runs before the loop stored it) is ranked by the evaluation of its step in
  `metrics.jsonl`. Raises `FileNotFoundError` when no kept checkpoint was evaluated.
  """
  steps = sorted(checkpointer.manager.all_steps())
  logged = metrics_lib.latest_per_step(metrics_lib.read_metrics(checkpointer.directory.parent), "eval", "error")
  scored = []
  for step in steps:
    error = checkpointer.eval_metrics(step).get("error", logged.get(step, {}).get("error"))
    if error is not None:
      scored.append((float(error), step))
  if not scored:
    raise FileNotFoundError(f"no evaluated checkpoint in {checkpointer.directory} (saved steps {steps}, none "
                            "with an eval error saved or in metrics.jsonl); use step='latest' or a step number")
  error, step = min(scored)
  return int(step), error


def resolve_step(checkpointer: ckpt_lib.Checkpointer, step: Optional[int | str]) -> int:
  """The saved step that `step` names: None/"latest", "best" (`best_checkpoint`) or a number."""
  if step == "best":
    return best_checkpoint(checkpointer)[0]
  if step is None or step == "latest":
    found = checkpointer.latest_step()
  else:
    found = int(step)
    if found not in checkpointer.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {found} in {checkpointer.directory}; "
                              f"saved steps: {sorted(checkpointer.manager.all_steps())}")
  if found is None:
    raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
  return int(found)


def load_variables(workdir: str | pathlib.Path, step: Optional[int | str] = None,
                   config: Optional[ml_collections.ConfigDict] = None,
                   log: Callable[[str], None] = logging.warning) -> Tuple[models.ResNet, Variables]:
  """The trained network of a `train` run and its `{"params", "batch_stats"}`, for inference.

  Restores only the parameters and BatchNorm statistics (an Orbax partial restore), so
  neither the optimiser nor the dataset is needed. `step`: a saved step, `"latest"`
  (default) or `"best"` (the kept checkpoint with the lowest eval error). For `"latest"`,
  an unreadable checkpoint is reported through `log` and the next older one is used.

  >>> model, variables = rj.train.load_variables("runs/cifar10_resnet20", step="best")
  >>> logits = model.apply(variables, images, train=False)
  """
  model, variables, _ = restore_variables(workdir, step, config, log)
  return model, variables


def _restore_step(checkpointer: ckpt_lib.Checkpointer, step: int, config: ml_collections.ConfigDict
                  ) -> Tuple[models.ResNet, Variables]:
  """The network that wrote `step` (from its recorded classes and input shape) and its variables."""
  saved = checkpointer.read_meta(step)
  num_classes, image_shape = int(saved["num_classes"]), tuple(saved["image_shape"])
  model = build.model(config, num_classes)
  abstract = models.abstract_variables(model, (1, *image_shape))
  meta = ckpt_lib.fingerprint(build.model_spec(config), num_classes, image_shape, dict(abstract))
  return model, checkpointer.restore_variables(step, dict(abstract), meta)


def restore_variables(workdir: str | pathlib.Path, step: Optional[int | str] = None,
                      config: Optional[ml_collections.ConfigDict] = None,
                      log: Callable[[str], None] = logging.warning) -> Tuple[models.ResNet, Variables, int]:
  """`load_variables`, and the step it restored (for `"best"`, `log` says which and why)."""
  object_store.check_reachable(workdir)
  workdir = workdir_io.as_path(workdir)
  workdir_lib.check_format(workdir)
  config = config_lib.load_config(workdir) if config is None else config
  checkpointer = ckpt_lib.Checkpointer(workdir / CHECKPOINT_DIR, keep=config.keep_checkpoints,
                                       keep_best=config.keep_best_checkpoints, async_save=False,
                                       create=False)
  try:
    newest = step is None or step == "latest"
    if newest:
      candidates = sorted(checkpointer.manager.all_steps(), reverse=True)
    elif step == "best":
      best, error = best_checkpoint(checkpointer)
      log(f"step 'best' is step {best}: the lowest eval error ({error:.2f}%) of the kept checkpoints "
          f"{sorted(checkpointer.manager.all_steps())}")
      candidates = [best]
    else:
      candidates = [resolve_step(checkpointer, step)]
    if not candidates:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
    unreadable = []
    for found in candidates:
      try:
        model, variables = _restore_step(checkpointer, found, config)
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


def load_network(workdir: str | pathlib.Path, step: Optional[int | str] = None,
                 data_dir: Optional[str | pathlib.Path] = None,
                 log: Callable[[str], None] = logging.warning) -> TrainedNetwork:
  """The trained network of a `train` run with its weights and its eval-time preprocessing.

  `step`: as `load_variables` (`"latest"` by default, `"best"`, or a number). The
  preprocessing is the one the run recorded (`WORKDIR/preprocessing.json`: for CIFAR the
  train split's mean image); a run from before it was recorded has it computed from its
  dataset (found in `data_dir`, else where it trained, else $TFDS_DATA_DIR), which `log`
  reports: `record_preprocessing(WORKDIR)` stores it once.

  >>> net = rj.train.load_network("runs/cifar10_resnet20", step="best")
  >>> logits = net(images_uint8)                 # = net.model.apply(net.variables, net.preprocessing(images_uint8))
  """
  workdir = workdir_io.as_path(workdir)
  config = config_lib.load_config(workdir)
  model, variables, found = restore_variables(workdir, step, config, log)
  recorded = preprocessing_lib.load(workdir)
  if recorded is None:
    recorded = _dataset_preprocessing(workdir, data_dir)
    log(f"{workdir} recorded no {preprocessing_lib.FILE}: computed it from the dataset ({recorded.description}); "
        f"rj.train.record_preprocessing({str(workdir)!r}) stores it")
  return TrainedNetwork(model, variables, recorded, name=config.model.name,
                        source=f"{workdir / CHECKPOINT_DIR / str(found)}", step=found)


def _dataset_preprocessing(workdir: pathlib.Path, data_dir: Optional[str | pathlib.Path]
                           ) -> preprocessing_lib.Preprocessing:
  config = config_lib.with_local_data_dir(config_lib.load_config(workdir), data_dir)
  found = build.pipeline(config, mesh_lib.create_mesh()).eval_preprocessing
  if found is None:
    raise ValueError(f"dataset {config.data.name!r} does not describe its eval preprocessing "
                     "(OpenDataset.eval_preprocessing); apply its pipeline's preprocess(images, None, False)")
  return found


def record_preprocessing(workdir: str | pathlib.Path, data_dir: Optional[str | pathlib.Path] = None
                         ) -> pathlib.Path:
  """Computes a run's eval-time preprocessing from its dataset and stores it in the workdir
  (`preprocessing.json`), for a run trained before runs recorded it. Returns the file."""
  workdir = workdir_io.as_path(workdir)
  return _dataset_preprocessing(workdir, data_dir).save(workdir)


def init_from(spec: str, state: Any, mesh: Mesh, num_classes: int, image_shape) -> Tuple[Any, str]:
  """`state` with the params and BN statistics of the run `spec` names (`config.init_from`:
  "WORKDIR[:STEP|latest|best]"), which must be the same network; and a description of it."""
  path, step = config_lib.parse_init_from(spec)
  other_model, variables = load_variables(path, step)
  if other_model.num_classes != num_classes:
    raise ckpt_lib.CheckpointMismatchError(
        f"init_from={spec!r}: that run's network has {other_model.num_classes} classes, this "
        f"dataset {num_classes}")
  ours = ckpt_lib.fingerprint({}, num_classes, image_shape, {"params": state.params,
                                                             "batch_stats": state.batch_stats})
  theirs = ckpt_lib.fingerprint({}, num_classes, image_shape, {"params": variables["params"],
                                                               "batch_stats": variables.get("batch_stats", {})})
  problem = ckpt_lib.describe_mismatch(theirs, ours, ckpt_lib.VARIABLE_KEYS)
  if problem:
    raise ckpt_lib.CheckpointMismatchError(f"init_from={spec!r} is another network: {problem}")
  params, batch_stats = jax.device_put(
      jax.tree.map(jnp.asarray, (variables["params"], variables.get("batch_stats", {}))),
      mesh_lib.replicated(mesh))
  return state.replace(params=params, batch_stats=batch_stats), f"{path} ({'latest' if step is None else step})"
