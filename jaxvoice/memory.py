"""Memory: what a computation needs against what the machine can give it, checked before anything is allocated.

A model too big for the machine must be refused in one line before XLA tries to allocate it: an allocation
that fails is a traceback, and one that succeeds on swap or overcommit can take the whole machine down.
Sizes are counted from abstract shapes (`jax.eval_shape`), so nothing is allocated to count them.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path
from typing import Any

from jaxvoice.errors import UserError

GiB = 1 << 30


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ShapeDtypeStruct) leaf of a pytree, as Python ints (no overflow)."""
    import jax
    import numpy as np

    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), where a limit is set (containers)."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("\n")[0].split(":", 2)[2]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text().strip())
    except (OSError, ValueError, IndexError):
        return None


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmSize, VmData), in bytes; 0 where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _rlimit_room() -> int | None:
    """What is left under the soft address-space / data-segment limits of this process (`ulimit -v`,
    `ulimit -d`), if set: the limit minus what the process already maps (VmSize) or holds as data (VmData)."""
    rooms = []
    for kind, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(kind)
        if soft != resource.RLIM_INFINITY:
            rooms.append(soft - _status_bytes(used))
    return min(rooms) if rooms else None


def host_available() -> int | None:
    """Bytes this process can still take on the host: the least of the free memory (MemAvailable), its
    cgroup's remaining limit and its rlimits; None where none of them can be read."""
    known = [v for v in (_meminfo_available(), _cgroup_room(), _rlimit_room()) if v is not None]
    return max(0, min(known)) if known else None


def device_available(device: Any = None) -> int | None:
    """Bytes free on a JAX device: its allocator's limit minus what is in use on GPU/TPU, the host's on CPU."""
    import jax

    device = device or jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 (a backend without memory statistics: nothing to check against)
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    return host_available()


def format_bytes(n: int) -> str:
    """1.5 GiB, 230 MiB, 3.2 PiB: one decimal from GiB up."""
    if n < GiB / 10:
        return f"{n / (1 << 20):,.0f} MiB"
    value, unit = n / GiB, "GiB"
    for bigger in ("TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.1f} {unit}"


def check_fits(needed: dict[str, int], available: int | None, fix: str, what: str = "this") -> None:
    """UserError if the parts of `needed` (name -> bytes) add up to more than `available` bytes.

    The message names the total, its parts, what is available and `fix` (the settings to lower)."""
    if available is None:
        return
    total = sum(needed.values())
    if total <= available:
        return
    parts = ", ".join(f"{name} {format_bytes(n)}" for name, n in needed.items() if n)
    raise UserError(
        f"{what} needs about {format_bytes(total)} of memory ({parts}) but only {format_bytes(available)} is available: {fix}"
    )
