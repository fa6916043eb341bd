"""A trained run's network and weights, without its optimiser: inference, evaluation, `init_from`.

`load_network(WORKDIR)` gives everything inference needs (`trained.TrainedNetwork`):
the network, its parameters and BatchNorm statistics, and the eval-time preprocessing the run
recorded (`WORKDIR/preprocessing.json`); `load_variables` only the first two; `evaluate`
scores a checkpoint on every example of a split. All read checkpoints through
`Checkpointer.restore_newest` and rank them by `Workdir.best_checkpoint`, as training does.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from resnet_jax import errors
from resnet_jax import models
from resnet_jax.data.preprocessing import Preprocessing
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.storage import integrity
from resnet_jax.storage.checkpoints import Checkpointer, CheckpointMismatchError, UnreadableCheckpointError
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import build
from resnet_jax.train import config as config_lib
from resnet_jax.train import ema as ema_lib
from resnet_jax.train import evaluation
from resnet_jax.train import state as state_lib
from resnet_jax.train.trained import TrainedNetwork

Variables = Dict[str, Any]
Log = Callable[[str], None]
Step = Optional[int | str]
WEIGHTS = ("raw", "ema")   # the trained weights, or their moving average (`ema.py`)


def _warn(line: str) -> None:
  logging.getLogger("resnet_jax").warning(line)


def _steps_to_try(workdir: Workdir, checkpointer: Checkpointer, step: Step, log: Log) -> Tuple[list, bool]:
  """The saved steps `step` names, newest first, and whether an unreadable one may fall back
  to the next older (only for the latest): None/"latest", "best" or a number."""
  if step is None or step == "latest":
    return checkpointer.all_steps(), True
  if step == "best":
    best, error = workdir.best_checkpoint(checkpointer, log)
    log(f"step 'best' is step {best}: the lowest eval error ({error:.2f}%) of the kept checkpoints "
        f"{checkpointer.all_steps()}")
    return [best], False
  if int(step) not in checkpointer.all_steps():
    raise errors.MissingError(f"no checkpoint of step {int(step)} in {checkpointer.directory}; "
                            f"saved steps: {checkpointer.all_steps()}")
  return [int(step)], False


def _restore_step(checkpointer: Checkpointer, step: int, config: ml_collections.ConfigDict, weights: str = "raw"
                  ) -> Tuple[models.ResNet, Variables]:
  """The network that wrote `step` (from its recorded classes and input shape) and its variables."""
  saved = checkpointer.read_meta(step)
  num_classes, image_shape = int(saved["num_classes"]), tuple(saved["image_shape"])
  model = build.model(config, num_classes)
  abstract = models.abstract_variables(model, (1, *image_shape))
  meta = integrity.fingerprint(build.model_spec(config), num_classes, image_shape, dict(abstract))
  return model, checkpointer.restore_variables(step, dict(abstract), meta, weights)


def _restore_named(checkpointer: Checkpointer, step: int, config, weights: str = "raw"
                   ) -> Tuple[models.ResNet, Variables]:
  """`_restore_step` of a step named on its own: unreadable is an error, not a fallback."""
  try:
    return _restore_step(checkpointer, step, config, weights)
  except errors.InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
    raise UnreadableCheckpointError(
        f"checkpoint {checkpointer.directory / str(step)} is unreadable ({errors.one_line(e)})") from e


def _check_weights(weights: str, config: ml_collections.ConfigDict, workdir: Workdir) -> None:
  if weights not in WEIGHTS:
    raise errors.InputError(f"weights={weights!r} is not one of {WEIGHTS}")
  if weights == "ema" and not ema_lib.enabled(config):
    raise errors.InputError(f"weights='ema': the run in {workdir} kept no moving average of its weights "
                            "(ema.decay=0); load weights='raw'")


def restore_variables(workdir: str | os.PathLike | Workdir, step: Step = None,
                      config: Optional[ml_collections.ConfigDict] = None,
                      log: Log = _warn, weights: str = "raw") -> Tuple[models.ResNet, Variables, int]:
  """`load_variables`, and the step it restored (for `"best"`, `log` says which and why)."""
  workdir = Workdir(workdir)
  workdir.check_reachable()
  workdir.check_format()
  config = config_lib.load_config(workdir) if config is None else config
  _check_weights(weights, config, workdir)
  checkpointer = workdir.checkpointer(keep=config.keep_checkpoints, keep_best=config.keep_best_checkpoints,
                                      async_save=False, create=False, rank_by=ema_lib.ranking(config))
  try:
    steps, fallback = _steps_to_try(workdir, checkpointer, step, log)
    if fallback:
      restored = checkpointer.restore_newest(lambda s: _restore_step(checkpointer, s, config, weights), log,
                                             steps=steps)
    else:
      restored = steps[0], _restore_named(checkpointer, steps[0], config, weights)
  finally:
    checkpointer.close()
  if restored is None:
    raise errors.MissingError(f"no checkpoint in {checkpointer.directory}")
  found, (model, variables) = restored
  if not variables["batch_stats"]:
    variables = {"params": variables["params"]}
  return model, variables, int(found)


def load_variables(workdir: str | os.PathLike | Workdir, step: Step = None,
                   config: Optional[ml_collections.ConfigDict] = None,
                   log: Log = _warn, weights: str = "raw") -> Tuple[models.ResNet, Variables]:
  """The trained network of a `train` run and its `{"params", "batch_stats"}`, for inference.

  Restores only the parameters and BatchNorm statistics (an Orbax partial restore), so
  neither the optimiser nor the dataset is needed. `step`: a saved step, `"latest"`
  (default) or `"best"` (the kept checkpoint with the lowest eval error; of the EMA's with
  `ema.keep_best`). For `"latest"`, an unreadable checkpoint is reported through `log` and
  the next older one is used. `weights`: "raw" (the trained weights) or "ema" (their moving
  average, for a run with `ema.decay` > 0).

  >>> model, variables = rj.train.load_variables("runs/cifar10_resnet20", step="best")
  >>> logits = model.apply(variables, images, train=False)
  """
  model, variables, _ = restore_variables(workdir, step, config, log, weights)
  return model, variables


def read_preprocessing(workdir: str | os.PathLike | Workdir) -> Optional[Preprocessing]:
  """The `Preprocessing` a run recorded (`preprocessing.json`); None when there is none."""
  workdir = Workdir(workdir)
  try:
    return Preprocessing.from_dict(workdir.read_json(Workdir.PREPROCESSING)) if workdir.has(
        Workdir.PREPROCESSING) else None
  except (ValueError, KeyError, TypeError) as e:
    raise errors.InputError(f"{workdir / Workdir.PREPROCESSING} is unreadable ({type(e).__name__}: {e}); delete it "
                     "and record it again with rj.train.record_preprocessing(WORKDIR)") from None


def record_preprocessing_of(workdir: Workdir, preprocessing: Preprocessing):
  """Writes `preprocessing.json` (atomically: a reader never sees half a file); its path."""
  workdir.write_json(Workdir.PREPROCESSING, preprocessing.to_dict())
  return workdir / Workdir.PREPROCESSING


def load_network(workdir: str | os.PathLike | Workdir, step: Step = None,
                 data_dir: Optional[str | os.PathLike] = None, log: Log = _warn, weights: str = "raw"
                 ) -> TrainedNetwork:
  """The trained network of a `train` run with its weights and its eval-time preprocessing.

  `step`: as `load_variables` (`"latest"` by default, `"best"`, or a number); `weights`:
  "raw" or "ema" (the moving average of a run that kept one). The
  preprocessing is the one the run recorded (`WORKDIR/preprocessing.json`: for CIFAR the
  train split's mean image); a run from before it was recorded has it computed from its
  dataset (found in `data_dir`, else where it trained, else $TFDS_DATA_DIR), which `log`
  reports: `record_preprocessing(WORKDIR)` stores it once.

  >>> net = rj.train.load_network("runs/cifar10_resnet20", step="best")
  >>> logits = net(images_uint8)                 # = net.model.apply(net.variables, net.preprocessing(images_uint8))
  """
  workdir = Workdir(workdir)
  config = config_lib.load_config(workdir)
  model, variables, found = restore_variables(workdir, step, config, log, weights)
  recorded = read_preprocessing(workdir)
  if recorded is None:
    recorded = _dataset_preprocessing(workdir, data_dir)
    log(f"{workdir} recorded no {Workdir.PREPROCESSING}: computed it from the dataset ({recorded.description}); "
        f"rj.train.record_preprocessing({str(workdir)!r}) stores it")
  return TrainedNetwork(model, variables, recorded, name=config.model.name, step=found,
                        source=f"{workdir / Workdir.CHECKPOINTS / str(found)}{' (EMA)' if weights == 'ema' else ''}")


def _dataset_preprocessing(workdir: Workdir, data_dir: Optional[str | os.PathLike]) -> Preprocessing:
  config = config_lib.with_local_data_dir(config_lib.load_config(workdir), data_dir)
  found = build.pipeline(config, mesh_lib.create_mesh()).eval_preprocessing
  if found is None:
    raise errors.InputError(f"dataset {config.data.name!r} does not describe its eval preprocessing "
                     "(OpenDataset.eval_preprocessing); apply its pipeline's preprocess(images, None, False)")
  return found


def record_preprocessing(workdir: str | os.PathLike | Workdir, data_dir: Optional[str | os.PathLike] = None):
  """Computes a run's eval-time preprocessing from its dataset and stores it in the workdir
  (`preprocessing.json`), for a run trained before runs recorded it. Returns the file."""
  workdir = Workdir(workdir)
  return record_preprocessing_of(workdir, _dataset_preprocessing(workdir, data_dir))


def evaluate(workdir: str | os.PathLike | Workdir, step: Step = None, split: Optional[str] = None,
             mesh: Optional[Mesh] = None, log: Log = _warn,
             data_dir: Optional[str | os.PathLike] = None, weights: str = "raw") -> Dict[str, Any]:
  """Evaluates a checkpoint of `workdir` (the latest by default, or `"best"`) on every
  example of a split; `weights="ema"`: the moving average of a run that kept one.

  The split is the run's `data.eval_split` unless `split` is given; the dataset is read
  from `data_dir`, else where the run read it if that folder exists here, else
  $TFDS_DATA_DIR (`config.with_local_data_dir`).
  """
  workdir = Workdir(workdir)
  workdir.check_reachable()
  config = config_lib.with_local_data_dir(config_lib.load_config(workdir), data_dir)
  if split:
    config.data.eval_split = split
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  try:
    pipe = build.pipeline(config, mesh)
  except FileNotFoundError as e:  # a run's data dir is often a path of the machine that trained it
    raise errors.MissingError(f"{e}; or read a prepared copy elsewhere: eval --data-dir DIR (evaluate(..., "
                            "data_dir=DIR)) or $TFDS_DATA_DIR") from None
  model, variables, step = restore_variables(workdir, step, config, log, weights)
  if model.num_classes != pipe.num_classes:
    raise config_lib.ConfigError(f"the checkpoint has {model.num_classes} classes but data.name="
                                 f"{config.data.name!r} has {pipe.num_classes}")
  params, batch_stats = jax.device_put((variables["params"], variables.get("batch_stats", {})),
                                       mesh_lib.replicated(mesh))
  result = evaluation.evaluate_params(evaluation.pipeline_eval_step(model, mesh, pipe), params, batch_stats,
                                      pipe, mesh)
  return {"step": int(step), **result, "model": config.model.name, "split": config.data.eval_split}


def init_from(spec: str, state: Any, mesh: Mesh, num_classes: int, image_shape) -> Tuple[Any, str]:
  """`state` with the params and BN statistics of the run `spec` names (`config.init_from`:
  "WORKDIR[:STEP|latest|best]"), which must be the same network; and a description of it."""
  path, step = config_lib.parse_init_from(spec)
  other_model, variables = load_variables(path, step)
  if other_model.num_classes != num_classes:
    raise CheckpointMismatchError(
        f"init_from={spec!r}: that run's network has {other_model.num_classes} classes, this "
        f"dataset {num_classes}")
  ours = integrity.fingerprint({}, num_classes, image_shape, {"params": state.params,
                                                              "batch_stats": state.batch_stats})
  theirs = integrity.fingerprint({}, num_classes, image_shape, {"params": variables["params"],
                                                                "batch_stats": variables.get("batch_stats", {})})
  problem = integrity.describe_mismatch(theirs, ours, integrity.VARIABLE_KEYS)
  if problem:
    raise CheckpointMismatchError(f"init_from={spec!r} is another network: {problem}")
  params, batch_stats = jax.device_put(
      jax.tree.map(jnp.asarray, (variables["params"], variables.get("batch_stats", {}))),
      mesh_lib.replicated(mesh))
  state = state.replace(params=params, batch_stats=batch_stats)
  if state_lib.ema_of(state) is not None:  # the moving average starts from the weights it starts from
    state = state.replace(ema=ema_lib.initial(params, batch_stats))
  return state, f"{path} ({'latest' if step is None else step})"
