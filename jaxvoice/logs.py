"""CSV metric logs of a run (train.csv, val.csv): appended while training, cut back on resume.

Floats are written with `repr`, the shortest text that reads back to the same float, so a resumed run's
rows can be compared bit for bit with an uninterrupted one's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from jaxvoice import files

TRAIN_COLUMNS = ("step", "epoch", "loss", "bits", "lr", "grad_norm", "tokens_per_s", "wall_s")
VAL_COLUMNS = ("step", "epoch", "val_loss", "val_bits")
SAMPLE_COLUMNS = ("step", "audio_s", "sample_s")  # samples.csv: sampling while training, and its cost


def _format(value) -> str:
    if isinstance(value, float | np.floating):
        return repr(float(value))  # not np.float64's repr, "np.float64(1.5)"
    return str(value)


class CsvLog:
    """An append-only CSV whose first column is the step; flushed at least every `flush_seconds`."""

    def __init__(
        self,
        path: str | Path,
        columns: tuple[str, ...],
        keep_through_step: int | None = None,
        flush_seconds: float = 2.0,
    ):
        self.path = Path(path)
        self.columns = columns
        self.flush_seconds = flush_seconds
        header = ",".join(columns) + "\n"
        if keep_through_step is not None and self.path.exists():
            self._cut_after(keep_through_step, header)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.write_text(header)
        self._file = open(self.path, "a", buffering=1 << 16)  # noqa: SIM115 (held open for the run)
        self._last_flush = time.monotonic()

    def _cut_after(self, step: int, header: str) -> None:
        """Keep the header and the complete rows with step <= `step` (resume: later rows are redone)."""
        kept = [header]
        with open(self.path) as f:
            lines = f.read().split("\n")
        for line in lines[1:-1]:  # the last piece is empty or a partial line cut by a kill
            first = line.split(",", 1)[0]
            if first.isdigit() and int(first) <= step:
                kept.append(line + "\n")
        files.write_atomic(self.path, "".join(kept), sync=True)  # the kept rows survive a crash right after

    def write(self, *values) -> None:
        self._file.write(",".join(map(_format, values)) + "\n")
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self, sync: bool = False) -> None:
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.flush(sync=True)
            self._file.close()


class NullLog:
    """What processes other than the first write: nothing (they compute the same numbers)."""

    def __init__(self, *args, **kwargs):
        pass

    def write(self, *values) -> None:
        pass

    def flush(self, sync: bool = False) -> None:
        pass

    def close(self) -> None:
        pass
