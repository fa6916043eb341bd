"""Input pipelines: TFDS ArrayRecord read with Grain, no TensorFlow, for any registered dataset.

  dataset_info(name) -> DatasetInfo                          (facts, no files read)
  prepare(name, source, data_dir) -> dataset directory      (`resnet-jax prepare`)
  default_config(name) -> ml_collections.ConfigDict
  create_pipeline(config, global_batch_size, eval_batch_size, mesh=None, seed=0) -> Pipeline
  Preprocessing(mean, std, input_size, resize_size=None)    (eval-time transform, as data)
  register_dataset(source)                                  (a new dataset: a `DatasetSource`)

Built in: cifar10, cifar100 (`cifar.CifarSource`, in memory) and imagenet2012
(`imagenet.ImageNetSource`, JPEGs decoded on the host). See the manual's "Data" page (docs/data.md).
"""
from typing import Any

from resnet_jax.data import augment
from resnet_jax.data import registry
from resnet_jax.data.config import default_config
from resnet_jax.data.device_resident import DeviceResidentTrainIterator
from resnet_jax.data.pipeline import DATA_AXIS, Pipeline, TrainIterator, create_pipeline
from resnet_jax.data.prepare import prepare, resolve_data_dir
from resnet_jax.data.preprocessing import Preprocessing
from resnet_jax.data.registry import dataset_info, dataset_names, dataset_source, register_dataset
from resnet_jax.data.small_images import InMemoryImages, SmallImageSource
from resnet_jax.data.source import DatasetInfo, DatasetSource, OpenDataset
from resnet_jax.data.tfds_source import TfdsSource

__all__ = ["DATASETS", "DATA_AXIS", "DatasetInfo", "DatasetSource", "DeviceResidentTrainIterator",
           "InMemoryImages", "OpenDataset",
           "Pipeline", "Preprocessing", "SmallImageSource", "TfdsSource", "TrainIterator", "augment", "create_pipeline",
           "dataset_info", "dataset_names", "dataset_source", "default_config", "prepare",
           "register_dataset", "resolve_data_dir"]


def __getattr__(name: str) -> Any:
  """`DATASETS`: the registered names, read when asked so that registered datasets appear."""
  if name == "DATASETS":
    return registry.dataset_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
