"""Rotary positions: the tables follow the formula, q_p . k_s depends only on p - s, positions
are tensors (offsets and per-sample positions need no special case), and the base is saved
state that set_base changes in place."""

import pytest
import torch

from seqlab.layers.rotary import RotaryEmbedding, apply_rotary


def test_tables_follow_the_formula():
    rope = RotaryEmbedding(8, 16, base=100.0)
    cos, sin = rope(torch.arange(16))
    assert cos.shape == (1, 1, 16, 8)
    p = torch.arange(16, dtype=torch.float64)[:, None]
    theta = 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angle = (p * theta).repeat(1, 2)
    torch.testing.assert_close(cos[0, 0], angle.cos().float())
    torch.testing.assert_close(sin[0, 0], angle.sin().float())


def test_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8, 64)
    q, k = torch.randn(8), torch.randn(8)

    def score(p, s):
        cq, sq = rope(torch.tensor([p]))
        ck, sk = rope(torch.tensor([s]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(3, 3), (q * k).sum(), rtol=1e-5, atol=1e-5)


def test_positions_may_be_offset_or_per_sample():
    rope = RotaryEmbedding(8, 32)
    cos_all, sin_all = rope(torch.arange(20))
    cos, sin = rope(torch.arange(7, 12))
    torch.testing.assert_close(cos, cos_all[:, :, 7:12])
    torch.testing.assert_close(sin, sin_all[:, :, 7:12])
    positions = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]])  # left padding repeats position 0
    cos_b, _ = rope(positions)
    assert cos_b.shape == (2, 1, 4, 8)
    torch.testing.assert_close(cos_b[0, 0, 3], cos_all[0, 0, 1])
    torch.testing.assert_close(cos_b[1], cos_all[0, :, :4])
    assert rope(torch.arange(3), torch.bfloat16)[0].dtype == torch.bfloat16


def test_tables_grow_past_max_seq_len_without_changing_earlier_positions():
    rope = RotaryEmbedding(8, 8)
    before = rope(torch.arange(8))[0]
    cos, _ = rope(torch.arange(30), max_position=30)
    assert rope.cos.shape[0] >= 30
    torch.testing.assert_close(cos[:, :, :8], before)


def test_set_base_recomputes_the_tables_in_place():
    rope = RotaryEmbedding(16, 32, base=10000)
    cos_ptr, sin_ptr = rope.cos.data_ptr(), rope.sin.data_ptr()
    rope.set_base(500.0)
    fresh = RotaryEmbedding(16, 32, base=500.0)
    assert (rope.cos.data_ptr(), rope.sin.data_ptr()) == (cos_ptr, sin_ptr)  # same storage
    torch.testing.assert_close(rope.cos, fresh.cos)
    torch.testing.assert_close(rope.sin, fresh.sin)
    assert rope.base == 500.0


def test_the_base_is_saved_and_the_tables_rebuilt_on_load():
    rope = RotaryEmbedding(8, 16, base=10000.0)
    rope.set_base(321.0)
    state = rope.state_dict()
    assert set(state) == {"base_value"}  # the tables are derived, not saved
    loaded = RotaryEmbedding(8, 16)
    loaded.load_state_dict(state)
    assert loaded.base == 321.0
    torch.testing.assert_close(loaded.cos, RotaryEmbedding(8, 16, base=321.0).cos)


def test_casting_the_module_keeps_the_base_exact():
    rope = RotaryEmbedding(8, 16, base=10000.0).to(torch.bfloat16)
    assert rope.base == 10000.0 and rope.base_value.dtype == torch.float64


def test_bad_arguments():
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="> 1"):
        RotaryEmbedding(8, base=1.0)
    with pytest.raises(ValueError, match="> 1"):
        RotaryEmbedding(8).set_base(float("nan"))
