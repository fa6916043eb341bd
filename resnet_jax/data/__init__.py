"""Input pipelines for CIFAR-10/100 and ImageNet: TFDS ArrayRecord read with Grain, no TensorFlow.

  prepare(name, source, data_dir) -> dataset directory      (`resnet-jax prepare`)
  default_config(name) -> ml_collections.ConfigDict
  create_pipeline(config, global_batch_size, eval_batch_size, mesh, seed) -> Pipeline

See the "Data" section of README.md.
"""
from resnet_jax.data import augment
from resnet_jax.data.config import DATASETS, default_config
from resnet_jax.data.pipeline import DATA_AXIS, Pipeline, TrainIterator, create_pipeline
from resnet_jax.data.prepare import prepare, resolve_data_dir

__all__ = ["DATASETS", "DATA_AXIS", "Pipeline", "TrainIterator", "augment", "create_pipeline",
           "default_config", "prepare", "resolve_data_dir"]
