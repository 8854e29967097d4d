"""Does the sign and mode of lambda_entropy move LFM expert usage the way the seed says?

    python benchmarks/lfm_entropy.py
    python benchmarks/lfm_entropy.py --gate token --top-k 2
    python benchmarks/lfm_entropy.py --data input.txt --preset baby --steps 300 --seeds 0,1

The seed (LFM_Entropy, spec specs/lfm.md, "What a user measures") claims:

    lambda > 0, mode "sample": loss += lambda H_sample            -> lower H_sample (specialization)
    lambda < 0, mode "sample": loss -= |lambda| H_sample          -> higher H_sample (diversity)
    mode "balance":            loss += lambda (H_sample - H_usage) -> low H_sample, high H_usage

The same "lfm" language model (same seed, hence the same initial weights: checked) is
trained on the same fixed batches for the same number of steps once per setting, on real
text (the embedded corpus with a char tokenizer, or --data). After training, on fixed
held-out batches, every MoE layer's router distributions over all decisions (one per
position: the causal sequence gate decides per prefix, the token gate per token) give
H_sample = mean H(g) and H_usage = H(mean g) in bits (max log2 E), and per-expert load
fractions (mean gate weight with dense routing, share of routed assignments with top-k):
the definitions of seqlab.layers.moe, applied to the whole held-out set rather than per
batch. The same numbers at initialization are the reference. Verdicts compare the
layer-mean entropies between settings; with several seeds they compare seed means and
say in how many seeds the direction held. Results print as markdown tables and go to JSON.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from seqlab.bench.report import git_commit
from seqlab.data import build_tokenizer, check_length, encode_corpus, load_corpus, split_ids
from seqlab.models import build_model, count_parameters
from seqlab.ops.entropy import sample_entropy, usage_entropy
from seqlab.ops.moe import expert_counts, top_k_gates


def parse_settings(text: str) -> list[tuple[str, float]]:
    """ "sample:0.1,sample:-0.1,balance:0.1" -> [("sample", 0.1), ("sample", -0.1), ("balance", 0.1)]."""
    settings = []
    for item in text.split(","):
        mode, _, value = item.partition(":")
        if mode not in ("sample", "balance") or not value:
            raise SystemExit(f"bad setting {item!r}: write MODE:LAMBDA with MODE sample or balance")
        settings.append((mode, float(value)))
    return settings


def label(setting: tuple[str, float]) -> str:
    mode, lam = setting
    return f"{mode} {lam:+g}"


def windows(ids: torch.Tensor, num: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """num random windows of seq_len + 1 tokens: [num, seq_len + 1]."""
    starts = torch.randint(len(ids) - seq_len - 1, (num,), generator=generator)
    return torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])


def build(args, vocab_size: int, setting: tuple[str, float], seed: int):
    torch.manual_seed(seed)
    mode, lam = setting
    return build_model(
        "lfm",
        args.preset,
        vocab_size=vocab_size,
        lambda_entropy=lam,
        entropy_mode=mode,
        gate=args.gate,
        top_k=args.top_k,
        num_experts=args.num_experts,
    )


class RouterProbe:
    """Keeps the router probabilities of every MoE layer from the forwards it watches."""

    def __init__(self, model):
        # LFM layer i is two Blocks, "mix{i}" (token + channel mixing) and "moe{i}" (the MoE).
        self.moes = [b.ffn for b in model.backbone.blocks if b.name.startswith("moe")]
        self.probs = [[] for _ in self.moes]
        for i, moe in enumerate(self.moes):
            moe.router.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def keep(module, inputs, logits):
            self.probs[i].append(logits.detach().float().softmax(-1).reshape(-1, logits.shape[-1]))

        return keep

    def clear(self):
        self.probs = [[] for _ in self.moes]

    def stats(self) -> list[dict]:
        """Per layer: h_sample, h_usage (bits) and load fractions over every decision seen."""
        out = []
        for moe, chunks in zip(self.moes, self.probs):
            p = torch.cat(chunks)  # [decisions, e]
            if moe.top_k is None:
                load = p.mean(0)
            else:
                index = top_k_gates(p, moe.top_k)[1]
                load = expert_counts(index, moe.num_experts).float() / index.numel()
            out.append(
                {
                    "h_sample": sample_entropy(p).item(),
                    "h_usage": usage_entropy(p).item(),
                    "load": [round(v, 4) for v in load.tolist()],
                }
            )
        return out


@torch.no_grad()
def evaluate(model, probe: RouterProbe, val_batches: torch.Tensor) -> dict:
    model.eval()
    probe.clear()
    losses = [model(x[:, :-1], targets=x[:, 1:]).loss.item() for x in val_batches]
    model.train()
    layers = probe.stats()
    return {
        "val_loss": float(np.mean(losses)),
        "h_sample": float(np.mean([r["h_sample"] for r in layers])),
        "h_usage": float(np.mean([r["h_usage"] for r in layers])),
        "layers": layers,
    }


def check(args, vocab_size: int, settings, val_batches: torch.Tensor) -> None:
    """Before measuring: same init for every setting, and the probe agrees with the model's metrics."""
    a, b = build(args, vocab_size, settings[0], 0), build(args, vocab_size, settings[-1], 0)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if not torch.equal(p, q):
            raise SystemExit(f"settings change the initial weights ({name}): the comparison is unfair")
    probe = RouterProbe(a)
    with torch.no_grad():
        out = a(val_batches[0][:, :-1])
    for i, layer in enumerate(probe.stats()):
        for key in ("h_sample", "h_usage"):
            torch.testing.assert_close(layer[key], out.metrics[f"moe{i}/{key}"].item(), rtol=1e-5, atol=1e-6)
        for e, value in enumerate(layer["load"]):
            torch.testing.assert_close(value, out.metrics[f"moe{i}/load{e}"].item(), rtol=0, atol=1e-4)


def train(args, vocab_size, setting, seed, train_batches, val_batches) -> dict:
    model = build(args, vocab_size, setting, seed)
    probe = RouterProbe(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start, lm_losses = time.perf_counter(), []
    for x in train_batches:
        probe.clear()  # only evaluation needs the probabilities
        out = model(x[:, :-1], targets=x[:, 1:])
        out.total_loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lm_losses.append(out.loss.item())
    result = evaluate(model, probe, val_batches)
    result.update(
        setting=label(setting),
        seed=seed,
        train_loss_last50=float(np.mean(lm_losses[-50:])),
        train_s=time.perf_counter() - start,
    )
    return result


def verdicts(results: dict[str, list[dict]], settings, seeds, top_k: int | None) -> list[dict]:
    """Direction checks between settings (layer-mean entropies, seed-mean when several seeds)."""

    def mean(name, key):
        return float(np.mean([r[key] for r in results[name]]))

    def per_seed(a, b, key, sign):
        return sum(sign * (ra[key] - rb[key]) > 0 for ra, rb in zip(results[a], results[b]))

    names = [label(s) for s in settings]
    zero = "sample +0"
    out = []
    for mode, lam in settings:
        name = label((mode, lam))
        if mode == "sample" and lam != 0:
            want = -1 if lam > 0 else 1  # lower H_sample for lambda > 0, higher for lambda < 0
            claim = f"{name} {'lowers' if lam > 0 else 'raises'} H_sample vs sample +0 " + (
                "(specialization)" if lam > 0 else "(diversity)"
            )
            if zero not in names:
                out.append({"claim": claim, "holds": None, "detail": "sample:0 was not run"})
                continue
            a, b = mean(name, "h_sample"), mean(zero, "h_sample")
            # Lower H_sample alone does not tell specialization from collapse: H_usage and the loads do.
            # picked: the smallest, over layers and seeds, share of decisions whose top-k holds the
            # busiest expert (a load fraction counts assignments, k per decision).
            hu = mean(name, "h_usage")
            picked = min(max(lr["load"]) * (top_k or 1) for r in results[name] for lr in r["layers"])
            note = (
                f"; NOTE: H_usage {hu:.3f} bits and in every layer and seed one expert gets >= {picked:.2f} "
                "of the decisions: usage collapsed, the decisions are sharp because (nearly) everything "
                "goes to one expert, which is not specialization"
                if lam > 0 and picked > 0.9
                else f"; H_usage {hu:.3f} bits"
            )
            out.append(
                {
                    "claim": claim,
                    "holds": bool(want * (a - b) > 0),
                    "detail": f"H_sample {a:.3f} vs {b:.3f} bits; "
                    f"direction held in {per_seed(name, zero, 'h_sample', want)}/{len(seeds)} seeds" + note,
                }
            )
        elif mode == "balance" and lam > 0:
            ref = label(("sample", lam))
            claim = f"{name} lowers H_sample vs sample +0 and keeps H_usage above {ref}"
            if zero not in names or ref not in names:
                out.append({"claim": claim, "holds": None, "detail": f"needs sample:0 and {ref}"})
                continue
            hs, hs0 = mean(name, "h_sample"), mean(zero, "h_sample")
            hu, hu_ref = mean(name, "h_usage"), mean(ref, "h_usage")
            out.append(
                {
                    "claim": claim,
                    "holds": bool(hs < hs0 and hu > hu_ref),
                    "detail": f"H_sample {hs:.3f} vs {hs0:.3f}; H_usage {hu:.3f} vs {hu_ref:.3f} bits; "
                    f"H_sample lower in {per_seed(name, zero, 'h_sample', -1)}/{len(seeds)} seeds, "
                    f"H_usage higher in {per_seed(name, ref, 'h_usage', 1)}/{len(seeds)} seeds",
                }
            )
    return out


def table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--settings",
        default="sample:0.1,sample:0,sample:-0.1,balance:0.1",
        type=parse_settings,
        help="MODE:LAMBDA list",
    )
    p.add_argument("--data", default=None, help="text file or folder; default: the embedded corpus")
    p.add_argument("--preset", default="tiny", choices=["tiny", "baby", "small"])
    p.add_argument("--gate", default="sequence", choices=["sequence", "token"])
    p.add_argument("--top-k", type=int, default=None, help="None: dense routing (the seed)")
    p.add_argument("--num-experts", type=int, default=4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_results/lfm_entropy.json", help="JSON output path")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    text = load_corpus(args.data)
    tokenizer = build_tokenizer("char", text)
    train_ids, val_ids = (
        torch.from_numpy(a.astype(np.int64)) for a in split_ids(encode_corpus(text, tokenizer))
    )
    seq_len = build(args, tokenizer.vocab_size, args.settings[0], 0).config.max_seq_len
    check_length(train_ids.numpy(), seq_len, "train")
    check_length(val_ids.numpy(), seq_len, "validation")
    # Fixed batches: every setting and seed sees the same training windows in the same order.
    train_windows = windows(
        train_ids, args.steps * args.batch_size, seq_len, torch.Generator().manual_seed(1)
    )
    train_batches = train_windows.view(args.steps, args.batch_size, -1)
    val_windows = windows(
        val_ids, args.val_batches * args.batch_size, seq_len, torch.Generator().manual_seed(2)
    )
    val_batches = val_windows.view(args.val_batches, args.batch_size, -1)
    check(args, tokenizer.vocab_size, args.settings, val_batches)

    env = {
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32",
        "commit": git_commit(),
        "data": args.data or "embedded corpus",
        "tokenizer": f"char ({tokenizer.vocab_size} symbols)",
        "preset": args.preset,
        "params": count_parameters(build(args, tokenizer.vocab_size, args.settings[0], 0)),
        "seq_len": seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "lr": args.lr,
        "val_tokens": args.val_batches * args.batch_size * seq_len,
        "gate": args.gate,
        "top_k": args.top_k,
        "num_experts": args.num_experts,
        "seeds": args.seeds,
    }
    print(f"lfm_entropy: {env}", flush=True)

    results: dict[str, list[dict]] = {"init": []}
    for seed in args.seeds:
        model = build(args, tokenizer.vocab_size, args.settings[0], seed)
        init = evaluate(model, RouterProbe(model), val_batches)
        results["init"].append({**init, "setting": "init", "seed": seed, "train_loss_last50": float("nan")})
        for setting in args.settings:
            r = train(args, tokenizer.vocab_size, setting, seed, train_batches, val_batches)
            results.setdefault(r["setting"], []).append(r)
            print(
                f"seed {seed} {r['setting']}: val_loss {r['val_loss']:.3f} H_sample {r['h_sample']:.3f} "
                f"H_usage {r['h_usage']:.3f} ({r['train_s']:.0f} s)",
                flush=True,
            )

    num_layers = len(results["init"][0]["layers"])
    rows, load_rows = [], []
    for name, runs in results.items():
        row = {
            "setting": name,
            "val_loss": float(np.mean([r["val_loss"] for r in runs])),
            "H_sample": float(np.mean([r["h_sample"] for r in runs])),
            "H_usage": float(np.mean([r["h_usage"] for r in runs])),
        }
        for i in range(num_layers):
            row[f"H_sample L{i}"] = float(np.mean([r["layers"][i]["h_sample"] for r in runs]))
            row[f"H_usage L{i}"] = float(np.mean([r["layers"][i]["h_usage"] for r in runs]))
        rows.append(row)
        for r in runs:
            load_rows.append(
                {"setting": name, "seed": r["seed"]}
                | {
                    f"load L{i}": " ".join(f"{v:.2f}" for v in r["layers"][i]["load"])
                    for i in range(num_layers)
                }
            )
    checks = verdicts(results, args.settings, args.seeds, args.top_k)

    keys = ["setting", "val_loss", "H_sample", "H_usage"]
    keys += [f"{h} L{i}" for i in range(num_layers) for h in ("H_sample", "H_usage")]
    print(
        f"\nentropies in bits (max log2 {args.num_experts} = {np.log2(args.num_experts):.3f}), "
        f"layer means; {len(args.seeds)} seed(s)\n"
    )
    print(table(rows, keys))
    print("\nload fractions per expert\n")
    print(table(load_rows, list(load_rows[0])))
    print("\nverdicts\n")
    for c in checks:
        word = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT MEASURED"}[c["holds"]]
        print(f"- {word}: {c['claim']}: {c['detail']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"env": env, "results": results, "verdicts": checks}, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
