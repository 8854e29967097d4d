"""transformers.Trainer on LEAP: gradient accumulation is exact for the HF wrapper (it honours
num_items_in_batch), and the seed-named core class trains under Trainer (ModelOutput reads like
Hugging Face's: out[0] is the loss); Trainer checkpoints a tied LM through the generic wrapper.
Offline, tiny models, CPU."""

import math

import pytest
import torch

from seqlab.models.output import ModelOutput

transformers_missing = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(name) for name in ("transformers", "accelerate")),
    reason="needs transformers and accelerate (the hf extra)",
)

VOCAB, LENGTH, ROWS = 97, 16, 64
SEED_KWARGS = dict(
    hidden_size=32,
    vocab_size=VOCAB,
    n_head=1,  # head dim 32, in LEAP's tuned range
    n_positions=LENGTH,
    n_layer=2,
    hidden_dropout_prob=0.0,
)


def dataset(ragged: bool) -> list[dict]:
    """64 rows of random tokens; with ragged=True a varying tail of each row's labels is -100,
    so micro-batches hold different numbers of labelled tokens (where a mean of per-micro-batch
    means differs from the mean over the whole batch)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(ROWS):
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels = ids.clone()
        if ragged:
            labels[LENGTH - (i * 5) % (LENGTH - 2) :] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def train_one_step(model, rows, tmp_path, batch: int, accumulation: int, steps: int = 1, **args):
    from transformers import Trainer, TrainingArguments

    options = dict(
        output_dir=str(tmp_path / f"b{batch}a{accumulation}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=0.1,
        # Plain SGD and no clipping: the step is proportional to the gradient, so a gradient
        # scaled by the accumulation steps shows in the parameters (Adam's first step would not).
        optim="sgd",
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    options.update(args)
    trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=rows)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logs, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_model_output_reads_like_a_hugging_face_output():
    logits, loss = torch.randn(1, 2, 3), torch.tensor(1.5)
    out = ModelOutput(logits=logits, loss=loss)
    assert out.keys() == ["loss", "logits"]
    assert out[0] is loss and out["loss"] is loss and out["logits"] is logits
    assert out[1:] == (logits,) and out.to_tuple() == (loss, logits) and list(out) == [loss, logits]
    assert dict(out) == {"loss": loss, "logits": logits}
    no_loss = ModelOutput(logits=logits, metrics={"m": 1.0})
    assert no_loss[0] is logits and no_loss["loss"] is None and no_loss.keys() == ["logits", "metrics"]
    with pytest.raises(KeyError, match="no field 'hidden_states'"):
        no_loss["hidden_states"]


@transformers_missing
@pytest.mark.parametrize("ragged", [False, True])
def test_gradient_accumulation_gives_the_full_batch_loss_and_step(tmp_path, ragged):
    from seqlab.models.leap_hf import LeapConfig, LeapForCausalLM

    rows = dataset(ragged)
    results = []
    for batch, accumulation in [(8, 1), (2, 4)]:
        torch.manual_seed(0)
        model = LeapForCausalLM(LeapConfig(**SEED_KWARGS))
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        results.append(train_one_step(model, rows, tmp_path, batch, accumulation))
    (full_logs, full_params), (accum_logs, accum_params) = results
    # The logged loss is the mean token loss of the same 8 rows, in both settings.
    assert len(full_logs) == len(accum_logs) == 1
    full_loss = full_logs[0]["loss"]
    assert math.isclose(full_loss, accum_logs[0]["loss"], rel_tol=1e-5)
    assert math.isclose(full_loss, math.log(VOCAB), rel_tol=0.2)  # ~ uniform at init, not x4
    assert math.isclose(full_logs[0]["grad_norm"], accum_logs[0]["grad_norm"], rel_tol=1e-4)
    # One SGD step from the same start: the same parameters, and they moved.
    assert any(not torch.equal(full_params[name], start[name]) for name in start)
    torch.testing.assert_close(accum_params, full_params, rtol=1e-5, atol=1e-6)


@transformers_missing
def test_num_items_in_batch_is_a_sum_over_the_given_count():
    from seqlab.models.leap_hf import LeapConfig, LeapForCausalLM

    torch.manual_seed(0)
    model = LeapForCausalLM(LeapConfig(**SEED_KWARGS)).eval()
    rows = dataset(ragged=True)[:3]
    ids = torch.stack([r["input_ids"] for r in rows])
    labels = torch.stack([r["labels"] for r in rows])
    mean = model(ids, labels=labels).loss
    count = labels[:, 1:].ne(-100).sum()
    torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=count).loss, mean)
    torch.testing.assert_close(
        model(ids, labels=labels, num_items_in_batch=4 * count).loss, mean / 4, rtol=1e-5, atol=1e-6
    )
    assert model(ids, num_items_in_batch=count).loss is None


@transformers_missing
def test_trainer_trains_the_seed_named_core_class(tmp_path):
    # The seed's README trains seqlab.models.leap.LeapForCausalLM (not a PreTrainedModel here)
    # with Trainer: compute_loss reads outputs[0], which ModelOutput gives as the loss.
    from seqlab.models.leap import LeapConfig, LeapForCausalLM

    torch.manual_seed(0)
    model = LeapForCausalLM(LeapConfig(**SEED_KWARGS))
    # Repeated rows: a few steps are enough for the loss to fall clearly.
    rows = dataset(ragged=False)[:8] * 8
    logs, _ = train_one_step(
        model, rows, tmp_path, batch=8, accumulation=1, steps=8, optim="adamw_torch", learning_rate=1e-2
    )
    losses = [entry["loss"] for entry in logs]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.5, losses


@transformers_missing
def test_trainer_checkpoints_a_tied_seqlab_lm(tmp_path):
    # A core LM ties its head to the embedding; the generic wrapper declares the tie, so
    # Trainer's safetensors checkpoint holds it once and from_pretrained ties it again.
    from transformers import AutoModelForCausalLM

    from seqlab.models import build_model
    from seqlab.models.hf import from_core

    torch.manual_seed(0)
    model = from_core(build_model("gpt", "tiny", vocab_size=VOCAB)).train()
    train_one_step(model, dataset(ragged=False)[:8], tmp_path, batch=8, accumulation=1, save_strategy="steps")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "b8a1" / "checkpoint-1")
    assert loaded.model.head.weight is loaded.model.embed.weight
    # the checkpoint is a copy of the trained weights: bit-equal
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
