"""Data parallelism with JAX's own machinery: a 1-D mesh ("data",) of every device of every process.

The B streams of a batch (and the carried state of those streams) are split over the mesh; params and the
optimizer state are replicated. jit inserts the gradient all-reduce. Several hosts join with
`jax.distributed.initialize`; each process reads only its own streams and the global batch is assembled
with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvoice.errors import UserError


def initialize(
    coordinator: str | None, num_processes: int | None, process_id: int | None, detect: bool = False
) -> None:
    """Join a multi-process run when asked to: by the three flags, or (`detect`) by whatever cluster JAX
    recognises from its environment (JAX_COORDINATOR_ADDRESS, Slurm, Open MPI, Cloud TPU, Kubernetes)."""
    if detect:
        _join(jax.distributed.initialize, "the cluster JAX found in this environment")
        return
    if coordinator is None and num_processes is None and process_id is None:
        return
    if coordinator is None or num_processes is None or process_id is None:
        raise UserError(
            "multi-process training needs all of --coordinator HOST:PORT, --num-processes and --process-id"
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"--coordinator must be HOST:PORT (a port 1..65535), e.g. node0:1234, got '{coordinator}'"
        )
    if num_processes < 1:
        raise UserError(f"--num-processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
    _join(
        lambda: jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id),
        f"the coordinator {coordinator}",
    )


def _join(initialize, where: str) -> None:
    try:
        initialize()
    except (RuntimeError, ValueError, OSError) as e:  # jaxlib reports a failed or timed-out join so
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"could not join {where} ({first}): check --coordinator, --num-processes and --process-id on "
            "every process, and that process 0 is running"
        ) from None


@dataclass(frozen=True)
class DataParallel:
    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        """[B, ...] arrays split over the devices by their first axis: batches [B, T], and every array of a
        carry, so the state of each stream lives with its stream."""
        return NamedSharding(self.mesh, P("data"))

    def check_batch_size(self, batch_size: int, what: str = "train.batch_size") -> None:
        n = self.num_devices
        if batch_size % n:
            options = ", ".join(str(n * k) for k in range(max(1, batch_size // n - 1), batch_size // n + 3))
            raise UserError(
                f"{what}={batch_size} does not split over {n} devices; use a multiple of {n} (e.g. {options})"
            )

    def local_rows(self, batch_size: int, sharding: NamedSharding | None = None) -> tuple[int, int]:
        """(first row, count) of a [B, ...] array that this process's devices hold: its streams."""
        index_map = (sharding or self.batch).addressable_devices_indices_map((batch_size,))
        starts = [idx[0].start or 0 for idx in index_map.values()]
        stops = [batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
        return min(starts), max(stops) - min(starts)

    def global_batch(self, local_BxT: np.ndarray, batch_size: int) -> jax.Array:
        """The global [B, T] array from this process's rows (its streams only)."""
        shape = (batch_size, *local_BxT.shape[1:])
        return jax.make_array_from_process_local_data(self.batch, local_BxT, shape)

    def put(self, full: np.ndarray, sharding: NamedSharding) -> jax.Array:
        """A global array from data every process holds in full (small things: eval batches, a fresh carry)."""
        return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])

    def batch_sharding_for(self, batch_size: int) -> NamedSharding:
        """Split over devices where B divides, else replicate (short held-out splits get a small B)."""
        return self.batch if batch_size % self.num_devices == 0 else self.replicated


def data_parallel() -> DataParallel:
    # Auto axes: XLA propagates the batch split through the model; the model code stays sharding-free.
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return DataParallel(mesh)
