import numpy as np
import pytest

from jaxvoice.errors import UserError
from jaxvoice.streams import Streams, eval_streams, train_streams


def test_batches_are_torch_rnns_layout():
    data = np.arange(1000, dtype=np.int64) % 251
    B, T = 4, 10
    s = train_streams(data.astype(np.uint8), B, T)
    # torch-rnn: N = largest multiple of B*T in len-1; x = data[:N].view(B, -1), y = data[1:N+1].view(B, -1)
    N = (len(data) - 1) // (B * T) * (B * T)
    x_BxL, y_BxL = data[:N].reshape(B, -1), data[1 : N + 1].reshape(B, -1)
    assert s.steps == N // (B * T)
    for i in range(s.steps):
        inputs, targets = s.batch(i)
        assert inputs.shape == targets.shape == (B, T) and inputs.dtype == np.uint8
        np.testing.assert_array_equal(inputs, x_BxL[:, i * T : (i + 1) * T].astype(np.uint8))
        np.testing.assert_array_equal(targets, y_BxL[:, i * T : (i + 1) * T].astype(np.uint8))


def test_consecutive_windows_continue_each_stream():
    data = (np.arange(2001) % 256).astype(np.uint8)
    s = train_streams(data, 5, 8)
    first, _ = s.batch(0)
    second, _ = s.batch(1)
    np.testing.assert_array_equal(second[:, 0], (first[:, -1].astype(int) + 1) % 256)


def test_local_streams_are_a_slice_of_the_global_batch():
    data = (np.arange(5000) % 256).astype(np.uint8)
    full = Streams(data, 8, 16)
    part = Streams(data, 8, 16, first_stream=4, num_local=2)
    np.testing.assert_array_equal(part.batch(3)[0], full.batch(3)[0][4:6])


def test_a_split_too_short_for_one_batch_is_a_user_error():
    with pytest.raises(UserError, match="lower train.batch_size or train.seq_length"):
        train_streams(np.zeros(100, np.uint8), 10, 10)


def test_held_out_streams_shrink_to_fit():
    s = eval_streams(np.zeros(101, np.uint8), 50, 50)
    assert (s.batch_size, s.seq_length, s.steps) == (2, 50, 1)
    s = eval_streams(np.zeros(21, np.uint8), 50, 50)
    assert (s.batch_size, s.seq_length, s.steps) == (1, 20, 1)
    with pytest.raises(UserError):
        eval_streams(np.zeros(1, np.uint8), 50, 50)
