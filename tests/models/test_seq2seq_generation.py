"""Encoder-decoder decoding: greedy against a recomputing reference, beam search against an
exhaustive search, padded batches against each source alone, eos handling, and the encoder /
cross-attention work done once per source. Agreement with Hugging Face's generate is in
test_t5_hf.py."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from seqlab.errors import ConfigError
from seqlab.models import build_model
from seqlab.models.seq2seq_generation import beam_search_seq2seq, generate_seq2seq, greedy_seq2seq
from seqlab.models.t5 import DECODER_START_ID, EOS_ID, PAD_ID

V = 23


def tiny(vocab_size=V, **overrides):
    torch.manual_seed(0)
    return build_model("t5", "tiny", vocab_size=vocab_size, dropout=0.0, **overrides).eval()


def padded_sources(lengths, vocab_size=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab_size, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


@torch.no_grad()
def greedy_by_recomputing(model, ids, mask, max_new_tokens):
    """The reference: the whole decoder prefix recomputed at every step, no cache."""
    out = []
    for i in range(ids.shape[0]):
        src = ids[i : i + 1, : int(mask[i].sum())]
        prefix = torch.tensor([[DECODER_START_ID]])
        for _ in range(max_new_tokens):
            nxt = model(src, decoder_input_ids=prefix).logits[0, -1].argmax()
            prefix = torch.cat([prefix, nxt.view(1, 1)], 1)
            if nxt == EOS_ID:
                break
        out.append(prefix[0, 1:].tolist())
    return out


def rows(tokens):
    """Each row up to and including its first eos."""
    result = []
    for row in tokens.tolist():
        result.append(row[: row.index(EOS_ID) + 1] if EOS_ID in row else row)
    return result


def test_greedy_equals_recomputing_the_prefix_at_every_step():
    model = tiny()
    ids, mask = padded_sources([6, 3, 5, 1])
    got = generate_seq2seq(model, ids, mask, max_new_tokens=8)
    assert rows(got) == greedy_by_recomputing(model, ids, mask, 8)


def test_rows_stop_at_eos_and_are_padded_after_it():
    # eos's logit made to beat token 5's wherever that one is positive: of these sources'
    # greedy outputs, two reach a 5 (and so end there), the others never do.
    model = tiny()
    with torch.no_grad():
        model.head.weight[EOS_ID] = 1.05 * model.head.weight[5]
    ids, mask = padded_sources([4, 2, 3, 6, 1, 2, 3, 5], seed=3)
    for num_beams in (1, 3):
        out = generate_seq2seq(model, ids, mask, max_new_tokens=10, num_beams=num_beams)
        assert out.shape[1] <= 10
        lengths = set()
        for row in out.tolist():
            if EOS_ID in row:
                end = row.index(EOS_ID) + 1
                assert all(t == PAD_ID for t in row[end:])
                lengths.add(end)
            else:
                lengths.add(len(row))
        assert len(lengths) > 1, "every row ended at the same step: the test shows nothing"
    greedy = generate_seq2seq(model, ids, mask, max_new_tokens=10)
    assert rows(greedy) == greedy_by_recomputing(model, ids, mask, 10)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_padded_batch_decodes_each_source_as_alone(num_beams):
    model = tiny()
    lengths = [7, 2, 5]
    ids, mask = padded_sources(lengths, seed=1)
    together = generate_seq2seq(model, ids, mask, max_new_tokens=6, num_beams=num_beams)
    for i, n in enumerate(lengths):
        alone = generate_seq2seq(model, ids[i : i + 1, :n], max_new_tokens=6, num_beams=num_beams)
        assert rows(together[i : i + 1]) == rows(alone)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_one_beam_is_greedy(length_penalty):
    model = tiny()
    ids, mask = padded_sources([5, 3, 6], seed=2)
    beam = beam_search_seq2seq(model, ids, mask, max_new_tokens=7, num_beams=1, length_penalty=length_penalty)
    greedy = greedy_seq2seq(model, ids, mask, max_new_tokens=7)
    assert torch.equal(beam, greedy)


@torch.no_grad()
def exhaustive_best(model, src, vocab_size, max_len):
    """argmax over every output (ending at its first eos, or max_len tokens) of sum log p."""
    best, best_score = None, -float("inf")
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab_size), repeat=n):
            if EOS_ID in seq[:-1] or (n < max_len and seq[-1] != EOS_ID):
                continue
            dec = torch.tensor([[DECODER_START_ID, *seq[:-1]]])
            log_probs = F.log_softmax(model(src, decoder_input_ids=dec).logits[0].float(), -1)
            score = log_probs[torch.arange(n), torch.tensor(seq)].sum().item()
            if score > best_score:
                best, best_score = list(seq), score
    return best


def test_a_beam_as_wide_as_the_search_space_finds_the_most_probable_output():
    # Without a length penalty scores only fall, so a beam that keeps every prefix is exact.
    model = tiny(vocab_size=5)
    ids, mask = padded_sources([3, 2], vocab_size=5, seed=4)
    out = beam_search_seq2seq(model, ids, mask, max_new_tokens=3, num_beams=80, length_penalty=0.0)
    greedy = greedy_seq2seq(model, ids, mask, max_new_tokens=3)
    differs = False
    for i, n in enumerate([3, 2]):
        best = exhaustive_best(model, ids[i : i + 1, :n], 5, 3)
        assert rows(out[i : i + 1]) == [best]
        differs |= rows(greedy[i : i + 1]) != [best]
    assert differs, "pick sources where greedy is not optimal, or the test shows nothing"


def test_beam_search_projects_each_sources_memory_once():
    model = tiny()
    ids, mask = padded_sources([5, 4], seed=5)
    encoder_calls, kv_rows = [], []
    hooks = [model.encoder[0].register_forward_hook(lambda *a: encoder_calls.append(1))]
    cross = [block.mixer for block in model.decoder if getattr(block.mixer, "cross", False)]
    for mixer in cross:
        hooks.append(mixer.kv.register_forward_hook(lambda mod, args, out: kv_rows.append(args[0].shape[0])))
    beam_search_seq2seq(model, ids, mask, max_new_tokens=6, num_beams=4)
    for h in hooks:
        h.remove()
    assert len(encoder_calls) == 1
    assert kv_rows == [2] * len(cross)  # once per cross-attention layer, on the 2 sources, not 2 x 4 beams


def test_generate_restores_the_training_mode():
    model = tiny().train()
    ids, mask = padded_sources([3])
    generate_seq2seq(model, ids, mask, max_new_tokens=2)
    assert model.training


def test_bad_arguments_are_errors():
    model = tiny()
    ids, mask = padded_sources([3, 2])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_seq2seq(model, ids, mask, max_new_tokens=0)
    with pytest.raises(ConfigError, match="num_beams"):
        generate_seq2seq(model, ids, mask, max_new_tokens=3, num_beams=0)
    with pytest.raises(ValueError, match="attention_mask"):
        generate_seq2seq(model, ids, mask[:, :1], max_new_tokens=3)
