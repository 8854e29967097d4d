"""The seed's AutonomicLayer facade: its API and meaning, without its defects 1, 2 and 4."""

import logging

import pytest
import torch

from seqlab.layers.hybrid import HybridAttention
from seqlab.models import build_model
from seqlab.models.autonomic_seed import AutonomicLayer


def hybrid():
    torch.manual_seed(0)
    return build_model("hybrid", "tiny", vocab_size=37)


def windows(model):
    return [m.window for m in model.modules() if isinstance(m, HybridAttention)]


def test_the_seeds_signature_and_attach_set_the_model():
    model = hybrid()
    layer = AutonomicLayer(32, 2, {"lr": 1e-3}, max_rel_dist=1, checkpointing=False, alpha=0.001, beta=0.9)
    assert layer.base == 10000 and layer.window_size == 40 and layer.params == {"lr": 1e-3}
    layer.attach(model)
    assert windows(model) == [40, 40] and model.rotary.base == 10000.0
    with pytest.raises(ValueError, match="no rotary embedding and no windowed attention"):
        AutonomicLayer(32, 2, None, model=torch.nn.Linear(2, 2))


def test_adjust_base_then_adjust_window_step_the_ewma_once():
    # Defect 1: the seed's two calls per training step stepped the EWMA twice.
    layer = AutonomicLayer(32, 2, None, model=hybrid())
    beta, losses = 0.9, [3.0, 2.0, 2.5]
    ewma = None
    for loss in losses:
        layer.adjust_base(loss)
        layer.adjust_window(loss)
        ewma = loss if ewma is None else beta * ewma + (1 - beta) * loss
        assert layer.running_loss == pytest.approx(ewma)
    assert layer.controller.observations == len(losses) and layer.adjust_counter == 2 * len(losses)
    # Called alone, each call is an observation of its own.
    layer.adjust_window(2.4)
    layer.adjust_window(2.3)
    assert layer.controller.observations == len(losses) + 2


def test_both_calls_of_a_step_move_by_the_same_signal():
    layer = AutonomicLayer(32, 2, None, model=hybrid(), window_size=20, factor=1.1)
    layer.adjust_base(5.0), layer.adjust_window(5.0)
    base, window = layer.adjust_base(4.0, factor=1.1), layer.adjust_window(4.0, factor=1.1)
    assert base == pytest.approx(11000.0) and window == 22


def test_the_window_moves_both_ways_on_the_model():
    # Defect 1: the seed's window controller never grew (int window * 1.005 rounds back).
    model = hybrid()
    layer = AutonomicLayer(32, 2, None, model=model, window_size=8)
    for i in range(80):
        layer.adjust_base(10.0 - 0.05 * i)
        layer.adjust_window(10.0 - 0.05 * i)
    grown = layer.window_size
    assert grown > 8 and windows(model) == [grown, grown]
    for i in range(1, 160):
        layer.adjust_base(10.0 + i)
        layer.adjust_window(10.0 + i)
    assert layer.window_size < grown and windows(model) == [layer.window_size] * 2


def test_update_base_changes_the_rotary_in_place_and_adds_no_parameters():
    # Defect 2: the seed's update_base made new Parameters the optimizer never saw.
    model = hybrid()
    optimizer = torch.optim.AdamW(model.parameters())
    params = {id(p) for p in model.parameters()}
    buffers = {name: b.data_ptr() for name, b in model.named_buffers()}
    layer = AutonomicLayer(32, 2, None, model=model)
    layer.update_base(2500.0)
    assert model.rotary.base == 2500.0
    assert (
        {id(p) for p in model.parameters()}
        == params
        == {id(p) for g in optimizer.param_groups for p in g["params"]}
    )
    assert {name: b.data_ptr() for name, b in model.named_buffers()} == buffers
    x = torch.randint(0, 37, (1, 12))
    out = model(x).logits
    layer.update_base(10000.0)
    assert not torch.allclose(out, model(x).logits)


def test_every_rotary_module_is_updated():
    # An encoder-decoder keeps two rotary tables (encoder and decoder): both follow.
    two = torch.nn.ModuleDict({"encoder": hybrid(), "decoder": hybrid()})
    layer = AutonomicLayer(32, 2, None, model=two)
    layer.update_base(3000.0)
    layer.update_window(5)
    assert two["encoder"].rotary.base == two["decoder"].rotary.base == 3000.0
    assert windows(two) == [5] * 4


def test_adjustments_stay_within_bounds():
    # Defect 4: without bounds the base drifted as factor^n.
    layer = AutonomicLayer(32, 2, None, model=hybrid(), threshold=0.0, base_bounds=(5000, 20000))
    for i in range(2000):
        layer.adjust_base(1000.0 - i)
    assert layer.base == 20000.0
    assert AutonomicLayer(32, 2, None).controller.base_bounds == (1000.0, 100000.0)


def test_every_200_adjustments_is_a_log_record(caplog):
    layer = AutonomicLayer(32, 2, None, model=hybrid())
    with caplog.at_level(logging.INFO, logger="seqlab.autonomic"):
        for i in range(200):
            layer.adjust_base(3.0 - 0.001 * i)
            layer.adjust_window(3.0 - 0.001 * i)
    records = [r for r in caplog.records if r.name == "seqlab.autonomic"]
    assert len(records) == 2 and "iteration 200" in records[0].getMessage()


def test_state_dict_continues_the_same_adjustments():
    seq = [3.0, 2.9, 3.1, 2.7, 2.75, 2.5, 2.6, 2.4]
    whole = AutonomicLayer(32, 2, None, model=hybrid(), factor=1.05)
    expected = [(whole.adjust_base(loss, 1.05), whole.adjust_window(loss, 1.05)) for loss in seq]
    first = AutonomicLayer(32, 2, None, model=hybrid(), factor=1.05)
    got = [(first.adjust_base(loss, 1.05), first.adjust_window(loss, 1.05)) for loss in seq[:4]]
    model = hybrid()
    second = AutonomicLayer(32, 2, None, model=model, factor=1.05)
    second.load_state_dict(first.state_dict())
    assert model.rotary.base == first.base
    got += [(second.adjust_base(loss, 1.05), second.adjust_window(loss, 1.05)) for loss in seq[4:]]
    assert got == expected and len(set(expected)) > 2


# ---------------------------------------------------------------- the seed's encoder-decoder host


def host(**overrides):
    from seqlab.models import build_config, model_entry

    torch.manual_seed(0)
    cfg = build_config("autonomic_host", "tiny", vocab_size=40, dropout=0.0, **overrides)
    return model_entry("autonomic_host").model(cfg).eval()


def test_host_is_t5_with_hybrid_self_attention_and_rotary():
    from seqlab.layers.attention import Attention

    model = host()
    hybrids = [m for m in model.modules() if isinstance(m, HybridAttention)]
    assert len(hybrids) == 4  # 2 encoder + 2 decoder self-attention layers
    assert [m.causal for m in hybrids] == [False, False, True, True]
    cross = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(cross) == 2 and all(m.cross for m in cross)
    assert model.t5.rotary is not None and model.t5.encoder_bias is None


def test_host_forward_takes_the_seeds_arguments_and_returns_loss_and_logits():
    from seqlab.models.t5 import shift_right

    model = host()
    ids = torch.randint(3, 40, (2, 9))
    labels = torch.randint(3, 40, (2, 6))
    labels[1, -2:] = -100
    out = model(ids, labels=labels)
    assert set(out.keys()) >= {"loss", "logits"} and out["logits"].shape == (2, 6, 40)
    same = model(ids, labels, dec_input_ids=shift_right(labels))
    torch.testing.assert_close(same["loss"], out["loss"])


def test_host_reads_float_frames_through_a_conv_stem():
    model = host(num_features=6)
    frames = torch.randn(2, 11, 6)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0
    labels = torch.randint(3, 40, (2, 5))
    model.train()
    out = model(frames, labels, attention_mask=mask)
    out.loss.backward()
    assert model.stem.conv1.weight.grad.abs().sum() > 0
    model.eval()
    assert model.encode(frames, mask).shape == (2, 6, 32)  # stride 2: ceil(11 / 2) positions
    with torch.no_grad():
        dec = torch.randint(3, 40, (2, 5))
        full = model(frames, attention_mask=mask, decoder_input_ids=dec).logits
        cache = model.make_cache(2, 5)
        steps = [model(frames, attention_mask=mask, decoder_input_ids=dec[:, :2], cache=cache).logits]
        steps += [
            model(frames, attention_mask=mask, decoder_input_ids=dec[:, i : i + 1], cache=cache).logits
            for i in range(2, 5)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(2, 11, 5), labels)


def test_host_with_the_seeds_autonomic_layer_observes_each_training_forward_once():
    from seqlab.models import build_config
    from seqlab.models.autonomic_host import AutonomicHost

    layer = AutonomicLayer(32, 4, None, window_size=4, factor=1.1, threshold=0.0)
    torch.manual_seed(0)
    model = AutonomicHost(build_config("autonomic_host", "tiny", vocab_size=40), autonomic_layer=layer)
    ids, labels = torch.randint(3, 40, (2, 9)), torch.randint(3, 40, (2, 6))
    model.train()
    for _ in range(3):
        model(ids, labels=labels)
    assert layer.controller.observations == 3 and layer.adjust_counter == 6
    assert model.t5.rotary.base == layer.base
    assert {m.window for m in model.modules() if isinstance(m, HybridAttention)} == {layer.window_size}
    model.eval()
    model(ids, labels=labels)  # evaluation does not adjust
    assert layer.controller.observations == 3
