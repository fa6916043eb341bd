"""The one place that knows which datasets exist.

`DATASETS`, `NUM_CLASSES`, `default_config`, `prepare` and `create_pipeline` all look a
name up here. A new dataset is a `DatasetSource` subclass (see `source.py`) and one
`register_dataset(MySource())` call, here for the built-in ones or in user code.
"""
from __future__ import annotations

import difflib
from typing import Dict, Tuple

from resnet_jax import errors
from resnet_jax.data import cifar, imagenet
from resnet_jax.data.source import DatasetInfo, DatasetSource

_SOURCES: Dict[str, DatasetSource] = {}


def register_dataset(source: DatasetSource) -> DatasetSource:
  """Makes `source` available under `source.info.name`; registering a name again replaces it."""
  if not isinstance(source, DatasetSource):
    raise TypeError(f"register_dataset needs a DatasetSource instance, got {type(source).__name__}")
  _SOURCES[source.info.name] = source
  return source


def dataset_names() -> Tuple[str, ...]:
  """Every registered dataset, in registration order."""
  return tuple(_SOURCES)


def dataset_source(name: str) -> DatasetSource:
  """The registered source of `name`; a one-line ValueError listing the valid names otherwise."""
  if name not in _SOURCES:
    close = difflib.get_close_matches(str(name), _SOURCES, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise errors.InputError(f"unknown dataset {name!r}; valid: {', '.join(_SOURCES)}{hint}")
  return _SOURCES[name]


def dataset_info(name: str) -> DatasetInfo:
  """Data-free facts of `name`: num_classes, image_shape, split sizes, default splits."""
  return dataset_source(name).info


def num_classes() -> Dict[str, int]:
  """{name: number of classes} of every registered dataset."""
  return {name: source.info.num_classes for name, source in _SOURCES.items()}


# The built-in datasets: He et al. 2015 §4.2 (CIFAR-10), Xie et al. 2017 and He et al. 2016
# (CIFAR-100), He et al. 2015 §3.4 (ImageNet).
register_dataset(cifar.CifarSource("cifar10"))
register_dataset(cifar.CifarSource("cifar100"))
register_dataset(imagenet.ImageNetSource())
