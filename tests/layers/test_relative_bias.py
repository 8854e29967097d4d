"""T5's relative position bias: buckets (vs the formula's hand values and vs Hugging Face's own
function), the bias tensor's layout, and decoding offsets (a query at position p over keys
0..p gets the row p of the full bias)."""

import pytest
import torch

from seqlab.layers.relative_bias import RelativePositionBias, relative_position_bucket


@pytest.mark.parametrize(
    "offset, bidirectional, bucket",
    [
        # bidirectional, 32 buckets, max distance 128: 16 per side, 8 of them exact.
        (0, True, 0),
        (-1, True, 1),
        (-7, True, 7),
        (1, True, 17),  # keys after the query use the upper half
        (-8, True, 8),  # first logarithmic bucket: 8 + floor(log(8/8) / log(16) * 8)
        (-11, True, 8),  # 8 + floor(log(11/8) / log(16) * 8) = 8 + floor(0.92)
        (-12, True, 9),  # 8 + floor(log(12/8) / log(16) * 8) = 8 + floor(1.17)
        (-127, True, 15),
        (-128, True, 15),
        (-5000, True, 15),
        (5000, True, 31),
        # causal: 32 buckets for the past, 16 exact; a future key is bucket 0.
        (5, False, 0),
        (0, False, 0),
        (-15, False, 15),
        (-16, False, 16),
        (-127, False, 31),
        (-5000, False, 31),
    ],
)
def test_buckets_follow_the_formula(offset, bidirectional, bucket):
    got = relative_position_bucket(torch.tensor([offset]), bidirectional=bidirectional)
    assert int(got) == bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (16, 40)])
def test_buckets_equal_hugging_face_t5(bidirectional, num_buckets, max_distance):
    modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    offsets = torch.arange(-400, 401)
    ours = relative_position_bucket(
        offsets, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    theirs = modeling_t5.T5Attention._relative_position_bucket(
        offsets, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(ours, theirs)


def test_bias_is_the_table_entry_of_each_pair_per_head():
    torch.manual_seed(0)
    bias = RelativePositionBias(3, bidirectional=True, num_buckets=8, max_distance=16)
    q, k = torch.arange(4), torch.arange(6)
    out = bias(q, k)
    assert out.shape == (1, 3, 4, 6)
    for i in range(4):
        for j in range(6):
            b = relative_position_bucket(
                torch.tensor(j - i), bidirectional=True, num_buckets=8, max_distance=16
            )
            torch.testing.assert_close(out[0, :, i, j], bias.embedding.weight[b])


def test_decoding_offsets_give_the_rows_of_the_full_bias():
    torch.manual_seed(0)
    bias = RelativePositionBias(2, bidirectional=False)
    full = bias(torch.arange(9), torch.arange(9))  # [1, h, 9, 9]
    for p in range(9):
        step = bias(torch.tensor([p]), torch.arange(p + 1))  # one query, the keys so far
        torch.testing.assert_close(step[0, :, 0], full[0, :, p, : p + 1], rtol=0, atol=0)


def test_batched_positions_give_one_bias_per_row():
    bias = RelativePositionBias(2, bidirectional=True)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = bias(positions, positions)
    assert out.shape == (2, 2, 3, 3)
    # Only differences matter: both rows see the same offsets.
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="num_buckets"):
        RelativePositionBias(2, bidirectional=True, num_buckets=2)
    with pytest.raises(ValueError, match="max_distance"):
        RelativePositionBias(2, bidirectional=True, num_buckets=32, max_distance=8)
