"""torch-rnn's minibatches: B parallel contiguous streams over a split, read T steps at a time.

The split (minus its last symbol, which is only ever a target) is cut to a multiple of B*T and laid out as
B streams of `steps * T` symbols each. Batch i is the i-th window of length T of every stream; the targets
are the inputs shifted by one. Because stream b's window i+1 follows window i, the hidden state carried
from batch i to batch i+1 is the state at the right place in the signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxvoice.errors import UserError


@dataclass(frozen=True)
class Streams:
    data: np.ndarray  # uint8, one split (a memmap view)
    batch_size: int  # B
    seq_length: int  # T
    first_stream: int = 0  # with `num_local`, the streams this process reads (multi-host)
    num_local: int | None = None

    @property
    def steps(self) -> int:
        """Batches per pass over the split (an epoch)."""
        return (len(self.data) - 1) // (self.batch_size * self.seq_length)

    @property
    def stream_length(self) -> int:
        return self.steps * self.seq_length

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs_BxT, targets_BxT) uint8 of batch `index` (0 <= index < steps)."""
        count = self.num_local if self.num_local is not None else self.batch_size
        starts_B = (self.first_stream + np.arange(count)) * self.stream_length + index * self.seq_length
        window_BxT1 = self.data[starts_B[:, None] + np.arange(self.seq_length + 1)]
        return window_BxT1[:, :-1], window_BxT1[:, 1:]


def train_streams(data: np.ndarray, batch_size: int, seq_length: int) -> Streams:
    streams = Streams(data, batch_size, seq_length)
    if streams.steps < 1:
        raise UserError(
            f"the train split has {len(data)} symbols but batch_size × seq_length + 1 = "
            f"{batch_size * seq_length + 1} are needed for one batch; lower train.batch_size or "
            "train.seq_length, or prepare more audio"
        )
    return streams


def eval_streams(data: np.ndarray, batch_size: int, seq_length: int, multiple: int = 1) -> Streams:
    """Streams over a held-out split: B streams if it is long enough, fewer (down to 1) where it is short,
    and a shorter T if even one stream of T steps does not fit (kept a multiple of `multiple`: a frame-level
    model reads whole frames)."""
    usable = len(data) - 1
    if usable < multiple:
        raise UserError(
            f"the held-out split has {len(data)} symbols; prepare a corpus with a larger val/test split"
        )
    seq_length = min(seq_length, usable)
    seq_length -= seq_length % multiple
    batch_size = max(1, min(batch_size, usable // seq_length))
    return Streams(data, batch_size, seq_length)
