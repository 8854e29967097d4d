"""Hugging Face wrapper of LEAP: config, Auto classes, save/load, loss and generate() (defect 2)."""

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from seqlab.errors import ConfigError  # noqa: E402
from seqlab.layers.cache import Cache as StateCache  # noqa: E402
from seqlab.models import leap_hf  # noqa: E402
from seqlab.models.leap import LeapForCausalLM as CoreLeap  # noqa: E402
from seqlab.models.leap_hf import CACHE_NAME, LeapConfig, LeapForCausalLM, LeapHFCache  # noqa: E402

SEED_KWARGS = dict(
    hidden_size=64,
    vocab_size=97,
    n_head=2,
    use_local_att=True,
    window_sizes=None,
    n_positions=64,
    n_layer=4,  # windows [global, 4, 8, 16]: both recurrent state kinds
    hidden_dropout_prob=0.0,
    initializer_range=None,
    rescale=None,
)


def make(**kw) -> LeapForCausalLM:
    torch.manual_seed(0)
    return LeapForCausalLM(LeapConfig(**{**SEED_KWARGS, **kw})).eval()


def greedy_reference(core: CoreLeap, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Uncached greedy decoding: the whole prefix recomputed in parallel form at every step."""
    for _ in range(steps):
        next_id = core(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_config_takes_the_seed_kwargs_and_round_trips(tmp_path):
    cfg = LeapConfig(**{**SEED_KWARGS, "rescale": 10}, my_note="kept", pad_token_id=0)
    assert cfg.model_type == "leap" and cfg.rescale == 10 and cfg.my_note == "kept"
    assert cfg.num_hidden_layers == 4 and cfg.max_position_embeddings == 64
    core = cfg.to_core()
    assert (core.dim, core.num_heads, core.num_layers, core.max_seq_len) == (64, 2, 4, 64)
    assert core.focus == "exp" and core.rescale == 10
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LeapConfig
    saved, restored = cfg.to_dict(), loaded.to_dict()
    restored.pop("_name_or_path")
    saved.pop("_name_or_path")
    assert restored == saved
    assert LeapConfig.from_core(core).to_core() == core
    with pytest.raises(ConfigError, match="window_sizes has 2 entries"):
        LeapConfig(**{**SEED_KWARGS, "window_sizes": [4, 8]})


def test_auto_classes_resolve_leap():
    leap_hf.register()  # idempotent: the import already registered
    cfg = AutoConfig.for_model("leap", **SEED_KWARGS)
    assert isinstance(cfg, LeapConfig)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), LeapForCausalLM)


def test_post_init_keeps_the_core_init():
    # The seed's default std is 1/sqrt(hidden_size) = 0.125 here; transformers' default is 0.02.
    model = make()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            assert abs(module.weight.std().item() - 0.125) < 0.01, name
        if isinstance(module, nn.Linear) and module.bias is not None:
            assert not module.bias.any(), name
    assert model.model.head.weight is model.model.embed.weight


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_save_pretrained_round_trip(tmp_path, position):
    model = make(position=position)
    ids = torch.randint(0, 97, (2, 11))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LeapForCausalLM
    assert loaded.model.head.weight is loaded.model.embed.weight
    # Nothing re-initialized: every tensor, buffers included, is the saved one.
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    if position == "rotary":
        torch.testing.assert_close(loaded.model.rotary.cos, model.model.rotary.cos, rtol=0, atol=0)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_changed_rope_base_survives_save_pretrained(tmp_path):
    # The base is saved state of the core model: from_pretrained uses the base training reached.
    model = make(position="rotary")
    model.model.set_base(777.0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.rotary.base == 777.0
    torch.testing.assert_close(loaded.model.rotary.cos, model.model.rotary.cos, rtol=0, atol=0)
    ids = torch.randint(0, 97, (1, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_loss_is_the_core_loss_and_labels_stay_unmodified():
    model = make()
    ids = torch.randint(1, 97, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    labels = ids.clone()
    out = model(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, model.model(ids, attention_mask=mask, labels=ids).loss)
    assert torch.equal(labels, ids)
    assert getattr(out, CACHE_NAME) is None


def test_from_core_wraps_a_trained_core_model():
    torch.manual_seed(1)
    core = CoreLeap(LeapConfig(**SEED_KWARGS, rope_base=500.0, position="rotary").to_core()).eval()
    model = LeapForCausalLM.from_core(core)
    assert model.config.rope_base == 500.0 and model.model.config.rope_base == 500.0
    ids = torch.randint(0, 97, (1, 9))
    torch.testing.assert_close(model(ids).logits, core(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_greedy_generate_equals_recomputing_the_prefix(position, assert_same_greedy):
    model = make(position=position)
    prompt = torch.randint(0, 97, (1, 7))
    out = model.generate(prompt, do_sample=False, max_new_tokens=20)
    assert_same_greedy(model.model, out, greedy_reference(model.model, prompt, 20))
    uncached = model.generate(prompt, do_sample=False, max_new_tokens=20, use_cache=False)
    assert_same_greedy(model.model, uncached, out)


def test_left_padded_batch_generates_like_single_sequences():
    model = make()
    short, long = torch.randint(1, 97, (1, 4)), torch.randint(1, 97, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    mask = (torch.arange(9) >= torch.tensor([[5], [0]])).long()
    out = model.generate(batch, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=0)
    for row, prompt in enumerate([short, long]):
        single = model.generate(prompt, do_sample=False, max_new_tokens=20)
        torch.testing.assert_close(out[row, 9:], single[0, prompt.shape[1] :], rtol=0, atol=0)


def test_generate_feeds_one_token_per_step_through_the_cache():
    model = make()
    lengths = []
    model.model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    out = model.generate(
        torch.randint(0, 97, (2, 6)), do_sample=False, max_new_tokens=10, return_dict_in_generate=True
    )
    assert lengths == [6] + [1] * 9
    cache = getattr(out, CACHE_NAME)
    assert isinstance(cache, LeapHFCache) and cache.get_seq_length() == 15
    assert isinstance(cache.state, StateCache) and cache.state.seen.tolist() == [15, 15]
    lengths.clear()
    model.generate(torch.randint(0, 97, (2, 6)), do_sample=False, max_new_tokens=4, use_cache=False)
    assert lengths == [6, 7, 8, 9]


def test_generate_continues_from_a_returned_cache():
    model = make()
    prompt = torch.randint(0, 97, (1, 6))
    first = model.generate(prompt, do_sample=False, max_new_tokens=5, return_dict_in_generate=True)
    cache = getattr(first, CACHE_NAME)
    assert cache.get_seq_length() == 10  # the last generated token is not fed yet
    more = model.generate(first.sequences, do_sample=False, max_new_tokens=5, **{CACHE_NAME: cache})
    torch.testing.assert_close(
        more, model.generate(prompt, do_sample=False, max_new_tokens=10), rtol=0, atol=0
    )


def test_beam_search_reorders_the_recurrent_state():
    model = make()
    prompt = torch.randint(0, 97, (2, 5))
    kwargs = dict(do_sample=False, num_beams=3, max_new_tokens=8)
    cached = model.generate(prompt, **kwargs)
    torch.testing.assert_close(cached, model.generate(prompt, use_cache=False, **kwargs), rtol=0, atol=0)
