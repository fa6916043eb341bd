"""Devices, processes and the 1-D data-parallel mesh: the one mesh constructor.

The mesh has one axis, `DATA_AXIS`: the input pipeline shards batches on it, the state is
replicated, and the "per_device" BatchNorm mode maps over it.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import errors

_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger

DATA_AXIS = "data"


class PeerLostError(errors.Error):
  """A computation across the processes of a job failed: another process died (`kill -9`, a lost
  host). The process ends at once: JAX's exit would wait for the dead one, then abort."""
  exit_at_once = True


def peer_lost(error: BaseException, newest_checkpoint: Optional[int]) -> PeerLostError:
  """The one line for `error`, a collective that failed in a job of several processes."""
  first = (str(error).strip().splitlines() or [type(error).__name__])[0]
  reason = first.rsplit("Error dispatching computation: ", 1)[-1][:200]  # the cause, after JAX's repeated prefix
  saved = (f"the checkpoints are intact (the newest: step {newest_checkpoint})" if newest_checkpoint is not None
           else "no checkpoint was written yet")
  return PeerLostError(f"process {jax.process_index()} of {jax.process_count()} stopped: a computation across the "
                       f"job's processes failed ({reason}), most likely because another process died; {saved}: start "
                       "every process of the job again to resume")


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Starts multi-host JAX when the job has several processes.

  Explicit coordinator flags win. Without them, `jax.distributed.initialize()`
  reads the cluster itself on Cloud TPU VMs (pod slices: every worker runs the same
  command), SLURM (`srun`, one task per node or per GPU) and Open MPI; a plain
  single-process run initialises nothing.
  """
  if coordinator_address or (num_processes and num_processes > 1):
    if coordinator_address is None or num_processes is None or process_id is None:
      raise errors.InputError(
          "multi-process run needs all of --coordinator_address, --num_processes and "
          f"--process_id (got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return
  if _cluster_detected():
    try:
      jax.distributed.initialize()
    except ValueError as e:  # JAX found no cluster parameters after all: one process
      _LOG.warning("running as a single process: jax.distributed.initialize() found no cluster (%s)", e)
      return
    _LOG.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def _cluster_detected() -> bool:
  """A launcher JAX knows how to read: SLURM or Open MPI with >1 task, or a Cloud TPU VM."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID")
              or glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over every device of every process (or the given devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `DATA_AXIS`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def is_multiprocess() -> bool:
  return jax.process_count() > 1
