"""Analysing a config at initialisation or a workdir's checkpoints: JSON and figures (`resnet-jax analyze`).

A `Subject` is one network with its weights and a batch of real images (preprocessed as the
network expects them), and says what they are: which weights (the initialisation a training run
of the config starts from, or a checkpoint), how BatchNorm normalises (`probe.Mode`: batch
statistics at initialisation, running statistics for a checkpoint) and which images.
`analyze(subjects, out)` runs the chosen analyses on each and writes `analysis.json` (every
number, what was measured, the commit, device and wall time) and one figure per analysis with
one line per subject.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import time
from typing import Any, Dict, List, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import resnet_jax.configs as configs_lib
from resnet_jax.analysis import figures, highway, responses, shattered
from resnet_jax.analysis.probe import Mode
from resnet_jax.errors import InputError
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.runtime import provenance
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import build, load
from resnet_jax.train import config as config_lib
from resnet_jax.train import state as state_lib

ANALYSES = ("highway", "shattered", "responses")
FILES = {"highway": "gradient_highway.png", "shattered": "shattered_gradients.png",
         "responses": "layer_responses.png"}


@dataclasses.dataclass
class Subject:
  """One network to analyse, its weights and images, and what they are (see the module)."""
  label: str
  model: Any
  variables: Dict[str, Any]
  images: jax.Array
  labels: jax.Array
  mode: Mode
  weights: str
  data: str


def _images(config: ml_collections.ConfigDict, count: int, preprocess=None):
  """The first `count` images of the config's eval split, preprocessed, their labels, and a description.

  Only the eval split is read: the pipeline is built with it as its train split too, so a train
  split the data dir cannot serve (a :smoke config's slice of a smaller dataset) does not matter."""
  config = config_lib.apply_overrides(config, {"data.train_split": config.data.eval_split})
  pipe = build.pipeline(config, mesh_lib.create_mesh())
  available = int(pipe.num_eval_examples)
  if count > available:
    raise InputError(f"--images {count}: {config.data.eval_split!r} of {config.data.name} has {available} images")
  pairs = [pipe.dataset.load_eval(i) for i in range(count)]
  raw = np.stack([np.asarray(image) for image, _ in pairs])
  images = preprocess(raw) if preprocess is not None else pipe.preprocess(jnp.asarray(raw), None, False)
  labels = jnp.asarray(np.array([int(label) for _, label in pairs], np.int32))
  data = f"the first {count:,} images of {config.data.name} {config.data.eval_split!r} ({available:,} available)"
  return jnp.asarray(images, jnp.float32), labels, data


def _with_data(config: ml_collections.ConfigDict, split: Optional[str], data_dir: Optional[str]
               ) -> ml_collections.ConfigDict:
  config = config_lib.with_local_data_dir(config, data_dir)
  return config_lib.apply_overrides(config, {"data.eval_split": split}) if split else config


def initial_variables(model: Any, image_shape: Sequence[int], seed: int) -> Dict[str, Any]:
  """The weights a training run of seed `seed` starts from (the engine's own initialisation)."""
  state = state_lib.create_train_state(model, optax.identity(), mesh_lib.create_mesh(), tuple(image_shape), seed)
  return {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


def subject_from_config(spec: str, label: Optional[str] = None, images: int = 64, split: Optional[str] = None,
                        data_dir: Optional[str] = None, overrides: configs_lib.Overrides = None) -> Subject:
  """The network of config `spec` (a name, `NAME:smoke` or a file) at initialisation (its seed)."""
  config = _with_data(configs_lib.load(spec, overrides or None), split, data_dir)
  model = build.validate(config)
  x, y, data = _images(config, images)
  variables = initial_variables(model, x.shape[1:], int(config.seed))
  return Subject(label or spec, model, variables, x, y, Mode.for_weights(initialised=True),
                 f"initialisation (seed {int(config.seed)})", data)


def checkpoint_steps(workdir: str, steps: str) -> List[Any]:
  """The steps `steps` names: "all" (every saved checkpoint, oldest first), "latest", "best" or a number."""
  steps = str(steps)
  if steps not in ("all", "latest", "best") and not steps.isdigit():
    raise InputError(f"--step {steps!r}: give latest, best, all or a step number")
  if steps == "all":
    saved = Workdir(workdir).saved_steps()
    if not saved:
      raise InputError(f"--step all: {workdir} has no saved checkpoint")
    return saved
  return [int(steps) if steps.isdigit() else steps]


def subjects_from_workdir(workdir: str, steps: str = "latest", images: int = 64, split: Optional[str] = None,
                          data_dir: Optional[str] = None, with_init: bool = False) -> List[Subject]:
  """A training run's checkpoints (evaluation mode), and with `with_init` its initialisation."""
  config = _with_data(config_lib.load_config(workdir), split, data_dir)
  chosen = checkpoint_steps(workdir, steps)
  name = pathlib.Path(str(workdir).rstrip("/")).name
  recorded = load.read_preprocessing(workdir)
  x, y, data = _images(config, images, recorded)
  subjects = []
  if with_init:
    model = build.validate(config)
    subjects.append(Subject(f"{name}, initialisation", model, initial_variables(model, x.shape[1:], int(config.seed)),
                            x, y, Mode.for_weights(initialised=True), f"initialisation (seed {int(config.seed)})", data))
  for step in chosen:
    model, variables, found = load.restore_variables(workdir, step, config)
    subjects.append(Subject(f"{name}, step {found:,}", model, variables, x, y, Mode.for_weights(initialised=False),
                            f"checkpoint of step {found:,} in {workdir}", data))
  return subjects


def _run_one(analysis: str, subject: Subject, points: int, lines: int) -> Any:
  if analysis == "highway":
    return highway.gradient_highway(subject.model, subject.variables, subject.images, subject.labels, subject.mode)
  if analysis == "shattered":
    if subject.images.shape[0] < 2 * lines:
      raise InputError(f"{lines} lines need {2 * lines} images; {subject.label} has {subject.images.shape[0]}")
    return shattered.gradient_correlations(subject.model, subject.variables, subject.images[:2 * lines],
                                           subject.mode, points=points)
  return responses.layer_responses(subject.model, subject.variables, subject.images, subject.mode)


def _note(subjects: Sequence[Subject], analysis: str, result_modes: Sequence[str]) -> str:
  weights = "; ".join(sorted({s.weights for s in subjects}))
  data = "; ".join(sorted({s.data for s in subjects}))
  return f"{weights}. {'; '.join(sorted(set(result_modes)))}. Images: {data}."


def _provenance(wall: Dict[str, float]) -> Dict[str, Any]:
  return {"commit": provenance.git_commit(), "device": provenance.device_description(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "jax": jax.__version__, "flax": flax.__version__, "wall_seconds": wall}


def analyze(subjects: Sequence[Subject], out: str, analyses: Sequence[str] = ANALYSES, points: int = 32,
            lines: int = 2, log=print) -> Dict[str, Any]:
  """Runs `analyses` on every subject; writes `out/analysis.json` and one PNG per analysis."""
  unknown = [a for a in analyses if a not in ANALYSES]
  if unknown:
    raise InputError(f"unknown analysis {unknown[0]!r}; valid: {', '.join(ANALYSES)}")
  labels = [s.label for s in subjects]
  if len(set(labels)) != len(labels):
    raise InputError(f"two subjects share a label ({labels}): give each its own")
  out_dir = pathlib.Path(out)
  report: Dict[str, Any] = {"subjects": [{"label": s.label, "weights": s.weights, "data": s.data,
                                          "network": type(s.model).__name__} for s in subjects], "results": {}}
  wall: Dict[str, float] = {}
  for analysis in analyses:
    results = {}
    for subject in subjects:
      start = time.perf_counter()
      results[subject.label] = _run_one(analysis, subject, points, lines)
      wall[f"{analysis}: {subject.label}"] = round(time.perf_counter() - start, 2)
      log(f"{analysis}: {subject.label} ({wall[f'{analysis}: {subject.label}']:.1f} s)")
    note = _note(subjects, analysis, [r.mode for r in results.values()])
    if analysis == "shattered":
      note += f" Only the first {2 * lines} are used: {lines} lines, image 2i to 2i+1, {points} inputs on each."
    figures.PLOTS[analysis](results, out_dir / FILES[analysis], note)
    report["results"][analysis] = {"figure": FILES[analysis], "note": note,
                                   "by_subject": {k: r.to_dict() for k, r in results.items()}}
  report["provenance"] = _provenance(wall)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "analysis.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
  return report
