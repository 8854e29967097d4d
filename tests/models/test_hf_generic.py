"""The generic Hugging Face wrapper (seqlab.models.hf) over the whole registry, offline: for every
causal and seq2seq entry (MODELS is iterated, so a new model is covered), save_pretrained /
Auto from_pretrained round trip, logits equal to the core's, greedy generate equal to seqlab's
own decoding; beam search; the loss under Trainer's num_items_in_batch; tied weights; and
`seqlab export --to hf` for runs of other models."""

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: E402

from seqlab.models import MODELS, build_model  # noqa: E402
from seqlab.models import hf as seqlab_hf  # noqa: E402
from seqlab.models.generation import generate  # noqa: E402
from seqlab.models.output import lm_loss  # noqa: E402
from seqlab.models.seq2seq_generation import generate_seq2seq  # noqa: E402
from seqlab.models.t5 import EOS_ID  # noqa: E402

V = 37
AUTO = {"lm": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}
CAUSAL = [name for name, entry in MODELS.items() if entry.task == "lm"]
SEQ2SEQ = [name for name, entry in MODELS.items() if entry.task == "seq2seq"]
OTHER = [name for name, entry in MODELS.items() if entry.task not in AUTO]


def core_model(name: str):
    if name == "xtransformers" and importlib.util.find_spec("x_transformers") is None:
        pytest.skip("needs x-transformers")
    torch.manual_seed(0)
    return build_model(name, "tiny", vocab_size=V).eval()


def round_trip(core, tmp_path):
    """core -> HF wrapper -> save_pretrained -> the task's Auto class from_pretrained."""
    hf = seqlab_hf.from_core(core)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    config = AutoConfig.from_pretrained(tmp_path)
    name = config.seqlab_model
    assert config.model_type == f"seqlab_{name}" and isinstance(config, seqlab_hf.hf_classes(name)[0])
    loaded = AUTO.get(MODELS[name].task, AutoModel).from_pretrained(tmp_path).eval()
    assert type(loaded) is seqlab_hf.hf_classes(name)[1]
    # Nothing re-initialized: every saved tensor is the core's (a copy through safetensors, so
    # bit-equal), and the derived buffers (non-persistent: rotary tables, decay slopes, masks) are
    # rebuilt equal (the same construction code run twice on one machine).
    torch.testing.assert_close(loaded.model.state_dict(), core.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(dict(loaded.model.named_buffers()), dict(core.named_buffers()), rtol=0, atol=0)
    return loaded


def upto_eos(tokens: torch.Tensor) -> list[list[int]]:
    return [row[: row.index(EOS_ID) + 1] if EOS_ID in row else row for row in tokens.tolist()]


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_lm_round_trip_logits_and_greedy_generate(name, tmp_path, assert_same_greedy):
    core = core_model(name)
    loaded = round_trip(core, tmp_path)
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, core(ids).logits, rtol=1e-5, atol=1e-5)
    got = loaded.generate(ids, do_sample=False, max_new_tokens=5)
    assert_same_greedy(core, got, generate(core, ids, 5, temperature=0))


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_round_trip_logits_and_greedy_generate(name, tmp_path):
    core = core_model(name)
    loaded = round_trip(core, tmp_path)
    src = torch.randint(3, V, (3, 8))
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    labels = torch.randint(3, V, (3, 5))
    with torch.no_grad():
        out = loaded(input_ids=src, attention_mask=mask, labels=labels)
        ref = core(src, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.total_loss(), rtol=1e-5, atol=1e-6)
    theirs = loaded.generate(input_ids=src, attention_mask=mask, do_sample=False, max_new_tokens=5)
    assert theirs[:, 0].eq(loaded.config.decoder_start_token_id).all()
    ours = generate_seq2seq(core, src, mask, max_new_tokens=5)
    assert upto_eos(ours) == upto_eos(theirs[:, 1:])


@pytest.mark.parametrize("name", OTHER)
def test_models_of_other_tasks_load_with_auto_model(name, tmp_path):
    core = core_model(name)
    loaded = round_trip(core, tmp_path)
    assert not hasattr(loaded, "generate")
    if MODELS[name].task == "forecast":
        x = torch.randn(2, 6, core.config.num_features)
    else:
        x = torch.randint(0, V, (2, 4, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, core(x).logits, rtol=1e-5, atol=1e-5)


def test_beam_search_equals_seqlabs():
    core = core_model("autonomic_host")
    hf = seqlab_hf.from_core(core)
    src = torch.randint(3, V, (2, 7))
    theirs = hf.generate(input_ids=src, do_sample=False, num_beams=3, max_new_tokens=5)
    ours = generate_seq2seq(core, src, max_new_tokens=5, num_beams=3)
    assert upto_eos(ours) == upto_eos(theirs[:, 1:])


def test_tied_weights_are_saved_once_and_tied_again(tmp_path):
    from safetensors import safe_open

    core = core_model("gpt")
    hf = seqlab_hf.from_core(core)
    assert hf.config.tie_word_embeddings and hf.all_tied_weights_keys == {
        "model.head.weight": "model.embed.weight"
    }
    hf.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "model.embed.weight" in f.keys() and "model.head.weight" not in f.keys()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.head.weight is loaded.model.embed.weight
    # t5's head is its own.
    assert not seqlab_hf.from_core(core_model("t5")).config.tie_word_embeddings


def test_loss_adds_the_aux_losses_and_honours_num_items_in_batch():
    core = core_model("lfm")  # MoE feed-forwards: auxiliary losses
    hf = seqlab_hf.from_core(core)
    ids = torch.randint(0, V, (2, 9))
    labels = ids.clone()
    labels[0, 6:] = -100
    with torch.no_grad():
        out = core(ids)
        mean = hf(ids, labels=labels).loss
    assert out.aux_losses
    expected = lm_loss(out.logits[:, :-1], labels[:, 1:]) + sum(out.aux_losses.values())
    torch.testing.assert_close(mean, expected)
    count = labels[:, 1:].ne(-100).sum()
    torch.testing.assert_close(hf(ids, labels=labels, num_items_in_batch=count).loss, mean)
    torch.testing.assert_close(
        hf(ids, labels=labels, num_items_in_batch=2 * count).loss, mean / 2, rtol=1e-5, atol=1e-6
    )


def test_padding_and_beams_the_model_cannot_take_are_clear_errors():
    core = core_model("lfm")  # its forward takes no attention mask
    hf = seqlab_hf.from_core(core)
    ids = torch.randint(1, V, (2, 6))
    torch.testing.assert_close(hf(ids, attention_mask=torch.ones_like(ids)).logits, hf(ids).logits)
    with pytest.raises(ValueError, match="takes no attention_mask"):
        hf(ids, attention_mask=(torch.arange(6) > 1).long().expand(2, 6))
    cache = seqlab_hf.SeqlabHFCache(object())
    with pytest.raises(NotImplementedError, match="cannot reorder"):
        cache.reorder_cache(torch.tensor([0]))


def run_config(tmp_path, name, *overrides):
    from seqlab.train.config import load_run_config

    return load_run_config(
        overrides=[
            f"model.name={name}",
            "model.preset=tiny",
            "train.batch_size=4",
            "train.max_iters=2",
            "train.eval_interval=2",
            "train.eval_iters=1",
            "train.eval_decode=0",
            "train.warmup_iters=1",
            "train.progress=false",
            "train.sample_tokens=0",
            f"run_dir={tmp_path / name}",
            *overrides,
        ]
    )


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("gpt", ["task=lm"]),
        ("heptapod", ["task=grid"]),
        ("t5", ["task=seq2seq", "data.source=reverse"]),  # as transformers' own T5
        ("kat5", ["task=seq2seq", "data.source=reverse"]),
        # not T5 v1.1 (RoPE instead of the relative bias): the generic wrapper instead
        ("t5", ["task=seq2seq", "data.source=reverse", "model.position=rotary"]),
    ],
)
def test_seqlab_export_writes_any_run(tmp_path, capsys, name, overrides):
    from transformers import T5ForConditionalGeneration

    from seqlab.cli.main import main
    from seqlab.train import train
    from seqlab.train.runs import load_run

    train(run_config(tmp_path, name, *overrides))
    out = tmp_path / f"{name}_hf"
    capsys.readouterr()
    assert main(["export", str(tmp_path / name), "--to", "hf", str(out)]) == 0
    line = capsys.readouterr().out
    assert str(out) in line and "from_pretrained" in line
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    model, task, cfg, _ = load_run(tmp_path / name, "best")
    assert json.loads((out / "seqlab_task.json").read_text())["task"] == cfg.task
    loaded = AUTO.get(cfg.task, AutoModel).from_pretrained(out).eval()
    native = name == "t5" and "model.position=rotary" not in overrides
    assert type(loaded) is (T5ForConditionalGeneration if native else seqlab_hf.hf_classes(name)[1])
    if cfg.task == "seq2seq":
        b = task.batch("val", 3, torch.Generator().manual_seed(0))
        inputs = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        with torch.no_grad():
            ours, theirs = model(**inputs).logits, loaded(**inputs).logits
    else:
        x = torch.randint(0, min(model.config.vocab_size, 10), (2, 4) if cfg.task == "lm" else (2, 3, 4))
        with torch.no_grad():
            ours, theirs = model(x).logits, loaded(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt", "leap", "lfm"])
def test_causal_beam_search_with_the_state_equals_beam_search_recomputing(name):
    """Beam search reorders the decoding state (KV cache, LEAP's sums, token mixing): with it,
    the same beams as recomputing the prefix at every step."""
    hf = seqlab_hf.from_core(core_model(name)).eval()
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    kw = dict(
        max_new_tokens=6,
        num_beams=3,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        cached = hf.generate(ids, use_cache=True, **kw)
        recomputed = hf.generate(ids, use_cache=False, **kw)
    # Two code paths, so fp32 round-off may break a near tie between beams differently: compare
    # the winning beams' scores (equal up to round-off even then), not their tokens. A state
    # reordered wrongly scores the continuations of other beams: far more than round-off.
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt", "leap"])
def test_left_padded_batched_generate_equals_each_row_alone(name, assert_same_greedy):
    hf = seqlab_hf.from_core(core_model(name)).eval()
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, V, (n,), generator=gen) for n in (6, 3)]
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 6 - len(row) :], mask[r, 6 - len(row) :] = row, 1
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = hf.generate(ids, attention_mask=mask, **kw)[:, 6:]
        alone = [hf.generate(row[None], **kw) for row in rows]
    # padded and unpadded rows are different computations: equal, or apart only at a near tie
    for row, got, want in zip(rows, batched, alone):
        assert_same_greedy(hf.model, torch.cat([row, got])[None], want)
