"""seqlab's t5 against Hugging Face's T5ForConditionalGeneration (offline, small random configs):
logits, loss and gradients with padded sources; greedy and beam generate; the conversion both
ways; save/from_pretrained; and kat5 under the generic wrapper (Auto classes, save/load, generate
through HF). `seqlab export` of t5 and kat5 runs is tested with every other model's, in
test_hf_generic.py."""

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForSeq2SeqLM, T5ForConditionalGeneration  # noqa: E402
from transformers import T5Config as HFT5Config  # noqa: E402
from transformers.models.t5.modeling_t5 import T5DenseGatedActDense, T5LayerNorm  # noqa: E402

from seqlab.errors import ConfigError  # noqa: E402
from seqlab.models import build_model  # noqa: E402
from seqlab.models.seq2seq_generation import generate_seq2seq  # noqa: E402
from seqlab.models.t5_hf import (  # noqa: E402
    KAT5HFConfig,
    KAT5HFForConditionalGeneration,
    from_hf,
    key_map,
    to_hf,
    to_hf_config,
)
from seqlab.train.export import export_run  # noqa: E402

V = 41
EOS = 1


def seqlab_t5(**overrides):
    torch.manual_seed(0)
    # 3 + 2 layers, 3 heads of width 12 (36 != dim 32: T5's d_kv is free), few buckets and a
    # short max distance, so that the logarithmic buckets and their cap are exercised.
    sizes = dict(
        vocab_size=V,
        dim=32,
        head_dim=12,
        ffn_dim=48,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        dropout=0.0,
    )
    return build_model("t5", None, **{**sizes, **overrides}).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (3, 20), generator=g)
    mask = torch.ones_like(src)
    mask[1, 13:] = 0  # right padding
    mask[2, :6] = 0  # left padding
    src = src.masked_fill(mask == 0, 0)
    labels = torch.randint(3, V, (3, 17), generator=g)
    labels[1, 12:] = -100
    return src, mask, labels


def test_logits_and_loss_equal_hugging_faces_with_padding():
    model = seqlab_t5()
    hf = to_hf(model).eval()
    src, mask, labels = batch()
    with torch.no_grad():
        ours = model(src, mask, labels=labels)
        theirs = hf(input_ids=src, attention_mask=mask, labels=labels)
    scale = theirs.logits.abs().max()
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-6)


def test_gradients_equal_hugging_faces():
    model = seqlab_t5()
    hf = to_hf(model).eval()
    src, mask, labels = batch(1)
    model(src, mask, labels=labels).loss.backward()
    hf(input_ids=src, attention_mask=mask, labels=labels).loss.backward()
    ours = dict(model.named_parameters())
    theirs = dict(hf.named_parameters())
    for our_key, their_keys in key_map(model.config):
        if our_key == "embed.weight":
            # HF's three embedding slots hold the one shared seqlab embedding.
            names = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
            expected = sum(theirs[n].grad for n in names if theirs[n].grad is not None)
        else:
            expected = torch.cat([theirs[k].grad for k in their_keys], 0)
        got = ours[our_key].grad
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * expected.abs().max(), msg=our_key)


def test_norm_and_feed_forward_equal_hugging_faces_modules():
    model = seqlab_t5()
    hf = to_hf(model).eval()
    x = torch.randn(2, 5, 32) * 3
    hf_norm = hf.encoder.block[1].layer[1].layer_norm
    assert isinstance(hf_norm, T5LayerNorm)
    torch.testing.assert_close(model.encoder[1].norm2(x), hf_norm(x), rtol=1e-6, atol=1e-6)
    hf_ffn = hf.encoder.block[1].layer[1].DenseReluDense
    assert isinstance(hf_ffn, T5DenseGatedActDense)
    torch.testing.assert_close(model.encoder[1].ffn(x), hf_ffn(x), rtol=1e-5, atol=1e-6)


def test_the_conversion_round_trips_exactly():
    model = seqlab_t5()
    back = from_hf(to_hf(model))
    ours, again = model.state_dict(), back.state_dict()
    assert ours.keys() == again.keys()
    for key in ours:
        assert torch.equal(ours[key], again[key]), key


def test_a_hugging_face_born_t5_converts_to_seqlab():
    cfg = HFT5Config(
        vocab_size=V,
        d_model=24,
        d_kv=8,
        d_ff=40,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    torch.manual_seed(3)
    hf = T5ForConditionalGeneration(cfg).eval()
    model = from_hf(hf).eval()
    src, mask, labels = batch(2)
    with torch.no_grad():
        torch.testing.assert_close(
            model(src, mask, labels=labels).logits,
            hf(input_ids=src, attention_mask=mask, labels=labels).logits,
            rtol=1e-5,
            atol=1e-5,
        )


def test_only_t5_v1_1_converts():
    with pytest.raises(ConfigError, match="gated-gelu"):
        from_hf(
            T5ForConditionalGeneration(HFT5Config(vocab_size=V, d_model=16, d_kv=4, d_ff=16, num_layers=1))
        )
    with pytest.raises(ConfigError, match="ffn"):
        to_hf_config(build_model("kat5", "tiny", vocab_size=V).config)


def test_save_pretrained_and_auto_from_pretrained_keep_the_logits(tmp_path):
    model = seqlab_t5()
    to_hf(model).save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, T5ForConditionalGeneration)
    assert loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()  # v1.1: untied head
    src, mask, labels = batch(3)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=src, attention_mask=mask, labels=labels).logits,
            model(src, mask, labels=labels).logits,
            rtol=1e-5,
            atol=1e-5,
        )


def upto_eos(tokens):
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return out


@pytest.mark.parametrize("num_beams, length_penalty", [(1, 1.0), (3, 1.0), (4, 0.5), (4, 2.0)])
def test_generate_agrees_with_hugging_face(num_beams, length_penalty):
    model = seqlab_t5()
    with torch.no_grad():  # some rows end early: eos beats token 7 where 7's logit is positive
        model.head.weight[EOS] = 1.02 * model.head.weight[7]
    hf = to_hf(model).eval()
    src, mask, _ = batch(4)
    ours = generate_seq2seq(
        model, src, mask, max_new_tokens=9, num_beams=num_beams, length_penalty=length_penalty
    )
    theirs = hf.generate(
        input_ids=src,
        attention_mask=mask,
        max_new_tokens=9,
        num_beams=num_beams,
        length_penalty=length_penalty,
        do_sample=False,
    )
    assert theirs[:, 0].eq(0).all()  # HF returns the start token (pad) first
    assert upto_eos(ours) == upto_eos(theirs[:, 1:])


def test_export_names_the_formats_it_writes(tmp_path):
    with pytest.raises(ConfigError, match="hf"):
        export_run(tmp_path / "any_run", "onnx", tmp_path / "out")


# The kat5 wrapper.


def kat5_wrapper():
    torch.manual_seed(0)
    core = build_model("kat5", "tiny", vocab_size=V, dropout=0.0, kan_reg_coef=1e-3).eval()
    return core, KAT5HFForConditionalGeneration.from_core(core)


def test_kat5_auto_classes_save_and_load(tmp_path):
    core, hf = kat5_wrapper()
    hf.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), KAT5HFConfig)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, KAT5HFForConditionalGeneration)
    src, mask, labels = batch(5)
    with torch.no_grad():
        out = loaded(input_ids=src, attention_mask=mask, labels=labels)
        ref = core(src, mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    # The HF loss is the training loss: cross-entropy plus the KAN regularization.
    assert ref.aux_losses
    # assembled by the wrapper, not by the core: the same terms, fp32 round-off apart
    torch.testing.assert_close(out.loss, ref.total_loss(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_kat5_generates_through_hugging_face_one_token_per_step(num_beams):
    core, hf = kat5_wrapper()
    src, mask, _ = batch(6)
    fed = []
    handle = hf.model.embed.register_forward_hook(lambda mod, args, out: fed.append(args[0].shape[1]))
    theirs = hf.generate(
        input_ids=src, attention_mask=mask, max_new_tokens=6, num_beams=num_beams, do_sample=False
    )
    handle.remove()
    assert fed[0] == src.shape[1]  # the source, encoded once
    assert fed[1:] == [1] * (len(fed) - 1)  # then one decoder token per step
    ours = generate_seq2seq(core, src, mask, max_new_tokens=6, num_beams=num_beams)
    assert upto_eos(ours) == upto_eos(theirs[:, 1:])


def test_kat5_hf_config_checks_its_values():
    assert KAT5HFConfig().model_type == "seqlab_kat5" and KAT5HFConfig().seqlab_model == "kat5"
    with pytest.raises(ConfigError, match="num_heads"):
        KAT5HFConfig(seqlab_config={"num_heads": 0})
