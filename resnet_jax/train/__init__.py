"""Training engine: data-parallel jit/shard_map steps, Optax SGD, Orbax checkpoints, multi-host.

>>> from resnet_jax import train
>>> train.train(config, "runs/cifar10_resnet20")        # resumes if the workdir has a checkpoint
>>> train.evaluate("runs/cifar10_resnet20")["error"]
"""
from resnet_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
from resnet_jax.train.config import ConfigError, load_config, num_train_steps, validate
from resnet_jax.train.loop import NonFiniteLossError, build_model, evaluate, train
from resnet_jax.train.mesh import DATA_AXIS, create_mesh, initialize_distributed
from resnet_jax.train.optim import create_learning_rate_schedule, create_optimizer
from resnet_jax.train.state import TrainState, create_train_state
from resnet_jax.train.step import BN_MODES, make_eval_step, make_train_step

__all__ = [
    "BN_MODES", "CheckpointMismatchError", "Checkpointer", "ConfigError", "DATA_AXIS",
    "NonFiniteLossError", "TrainState", "build_model", "create_learning_rate_schedule", "create_mesh",
    "create_optimizer", "create_train_state", "evaluate", "initialize_distributed", "load_config",
    "make_eval_step", "make_train_step", "num_train_steps", "train", "validate",
]
