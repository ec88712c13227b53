"""Data parallelism over every device of every host: a 1-D mesh, shardings, multi-host setup.

Parameters, masks, optimizer state and teacher are replicated; the batch is sharded on its leading
axis over the mesh axis "data". The train step is one `jax.jit` over global arrays, so XLA inserts
the collectives: the loss is the mean over the global batch (gradients are averaged), and
BatchNorm statistics are those of the global batch (per-device statistics are an option of the
train step). The same program runs on one CPU, N local devices, or many hosts.

Each process supplies only its own rows of every global batch; `shard` assembles the global array
(jax.make_array_from_process_local_data).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
DATA_AXIS = "data"
DISTRIBUTED_MODES = ("off", "auto", "on")
BATCH_NORM_MODES = ("global", "per_device")


def initialize(distributed: str = "off", *, coordinator_address: str = "",
               num_processes: int = 0, process_id: int = -1,
               coordinator_bind_address: str = "", num_cpu_devices: int = 0) -> None:
    """Set up devices and processes before any JAX computation.

    distributed="off": one process. "auto": jax.distributed.initialize() with JAX's cluster
    auto-detection (Cloud TPU pods, SLURM, Open MPI, Kubernetes; or JAX_COORDINATOR_ADDRESS in
    the environment). "on": the given coordinator address, process count and id; unset ones come
    from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (JAX itself reads only the
    first), else JAX's auto-detection. `num_cpu_devices` > 0 splits the CPU into that many
    devices (testing data parallelism without accelerators).
    """
    if distributed not in DISTRIBUTED_MODES:
        raise ValueError(f"parallel.distributed={distributed!r}; allowed: "
                         f"{', '.join(DISTRIBUTED_MODES)}")
    if num_cpu_devices > 0:
        jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    if distributed == "auto":
        jax.distributed.initialize()
    elif distributed == "on":
        if not num_processes:
            num_processes = _int_from_environment("JAX_NUM_PROCESSES", "parallel.num_processes",
                                                   default=0)
        if process_id < 0:
            process_id = _int_from_environment("JAX_PROCESS_ID", "parallel.process_id",
                                               default=-1)
        jax.distributed.initialize(
            coordinator_address=coordinator_address or None,
            num_processes=num_processes or None,
            process_id=process_id if process_id >= 0 else None,
            coordinator_bind_address=coordinator_bind_address or None)


def _int_from_environment(variable: str, key: str, *, default: int) -> int:
    """An integer environment variable standing in for the unset setting `key`."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} (standing in for {key}) is not an integer") \
            from None


def initialize_from_config(parallel: Any) -> None:
    """`initialize` driven by a config's `parallel` section."""
    initialize(parallel.distributed, coordinator_address=parallel.coordinator_address,
               num_processes=parallel.num_processes, process_id=parallel.process_id,
               coordinator_bind_address=parallel.coordinator_bind_address,
               num_cpu_devices=parallel.num_cpu_devices)


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh over all global devices and the two shardings the training code needs."""

    mesh: Mesh

    @classmethod
    def create(cls, devices: Optional[list] = None) -> "DataParallel":
        devices = jax.devices() if devices is None else devices
        return cls(Mesh(np.asarray(devices), (DATA_AXIS,)))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def device_count(self) -> int:
        return self.mesh.devices.size

    def batch_norm_groups(self, batch_norm: str) -> int:
        """How many slices of the batch BatchNorm takes its statistics over: one per device
        with parallel.batch_norm=per_device, else the whole global batch."""
        return self.device_count if batch_norm == "per_device" else 1

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    @property
    def is_main(self) -> bool:
        """Only the main process writes results, summaries, plots and TensorBoard events."""
        return self.process_index == 0

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is true on any process: a collective, so every process must call it
        at the same point (with one process, just `flag`)."""
        if self.process_count == 1:
            return bool(flag)
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))

    def check_batch_size(self, batch_size: int, key: str = "train.batch_size") -> None:
        if batch_size % self.device_count:
            raise ValueError(
                f"{key}={batch_size} is not divisible by the {self.device_count} devices "
                f"({self.process_count} process(es)); use a multiple of {self.device_count}")

    def shard(self, local: PyTree, global_batch_size: int) -> PyTree:
        """Global batch-sharded arrays from this process's rows of every leaf."""
        def one(x):
            shape = (global_batch_size, *np.shape(x)[1:])
            return jax.make_array_from_process_local_data(self.batch, x, shape)
        return jax.tree.map(one, local)

    def replicate(self, tree: PyTree) -> PyTree:
        """Global replicated arrays holding `tree` (the same values on every process)."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)),
            tree)

    def barrier(self, name: str) -> None:
        """Wait for every process (a no-op with one process)."""
        if self.process_count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)
