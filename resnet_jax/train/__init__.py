"""Training engine: data-parallel jit/shard_map steps, Optax optimisers, Orbax checkpoints, multi-host.

>>> from resnet_jax import train
>>> train.train(config, "runs/cifar10_resnet20")        # resumes if the workdir has a checkpoint
>>> train.train_packed([c0, c1, c2], ["runs/s0", "runs/s1", "runs/s2"])   # 3 runs, one program
>>> train.evaluate("runs/cifar10_resnet20")["error"]
>>> net = train.load_network("runs/cifar10_resnet20", step="best")   # network, weights, preprocessing
>>> logits = net(images_uint8)

Modules: `build` (the one place where a config is checked and becomes a model, optimiser
and pipeline), `step` (the train step, composed from parts), `evaluation` (the eval step and
when the loop evaluates), `group` (runs trained in lockstep; a run alone is a group of one),
`loop` (the schedule of steps, logs, evals and saves), `session` (a run's workdir for one
process), `load` (a trained run's network, weights and preprocessing; `evaluate`), `config`,
`optim` (SGD, AdamW, LAMB, LARS and the schedules), `parts` (the modern recipes' parts of
the step: losses, augmentations, accumulation, the EMA of `ema`), `packing`, `report`. A
workdir's files are `resnet_jax.storage`'s.
"""
from resnet_jax.runtime.mesh import DATA_AXIS, create_mesh, initialize_distributed
from resnet_jax.storage.checkpoints import CheckpointMismatchError, Checkpointer
from resnet_jax.train import build
from resnet_jax.train import packing
from resnet_jax.train.build import Experiment, validate
from resnet_jax.train.config import BN_MODES, ConfigError, load_config, num_train_steps
from resnet_jax.train.evaluation import evaluate_params, make_eval_step, zero_eval_metrics
from resnet_jax.train.group import RunResult
from resnet_jax.train.load import evaluate, load_network, load_variables, record_preprocessing
from resnet_jax.train.loop import train, train_packed
from resnet_jax.train.optim import create_learning_rate_schedule, create_optimizer
from resnet_jax.train.session import NonFiniteLossError
from resnet_jax.train.state import TrainState, abstract_train_state, create_train_state
from resnet_jax.train.step import make_train_step, new_metrics, zero_train_metrics
from resnet_jax.train.trained import TrainedNetwork

__all__ = [
    "BN_MODES", "CheckpointMismatchError", "Checkpointer", "ConfigError", "DATA_AXIS", "Experiment",
    "NonFiniteLossError", "RunResult", "TrainState", "TrainedNetwork", "abstract_train_state", "build",
    "create_learning_rate_schedule", "create_mesh", "create_optimizer", "create_train_state", "evaluate",
    "evaluate_params", "initialize_distributed", "load_config", "load_network", "load_variables",
    "make_eval_step", "make_train_step", "new_metrics", "num_train_steps", "packing", "record_preprocessing",
    "train", "train_packed", "validate", "zero_eval_metrics",
    "zero_train_metrics",
]
