"""Storage: a training run's workdir and everything in it, local or on `gs://`.

>>> from resnet_jax import storage
>>> workdir = storage.Workdir("runs/cifar10_resnet20")     # or "gs://bucket/runs/x"
>>> workdir.saved_steps(), workdir.read_metrics()[-1]
>>> checkpointer = workdir.checkpointer(create=False)       # a reader

Modules: `workdir` (the `Workdir` value: layout, lock, format and resume checks), `files`
(small files, one backend per kind of storage, chosen once per directory), `checkpoints`
(Orbax checkpoints: save, the one restore-with-fallback), `integrity` (fingerprints and
checksums), `records` (metrics, TensorBoard, sessions), `lock` and `lease` (one writer per
workdir), `object_store` (`gs://`: one-line errors, generation preconditions),
`orbax_quiet` (Orbax's tracebacks kept off the console). Nothing here imports the training
engine.
"""
from resnet_jax.storage.checkpoints import (Checkpointer, CheckpointMismatchError, CheckpointWriteError,
                                            ChecksumMismatchError, UnreadableCheckpointError)
from resnet_jax.storage.files import NotAFileError, WorkdirError, WorkdirWriteError, files_for
from resnet_jax.storage.lease import WorkdirBusyError
from resnet_jax.storage.object_store import StorageError
from resnet_jax.storage.workdir import ConfigChangedError, Workdir, config_changes, describe_changes, flat_fields

__all__ = ["CheckpointMismatchError", "CheckpointWriteError", "Checkpointer", "ChecksumMismatchError",
           "ConfigChangedError", "NotAFileError", "StorageError", "UnreadableCheckpointError", "Workdir",
           "WorkdirBusyError", "WorkdirError", "WorkdirWriteError", "config_changes", "describe_changes",
           "files_for", "flat_fields"]
