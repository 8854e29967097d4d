"""The 2D grid tasks: masked (or raster) grid modeling ("grid") and grid-to-grid ("grid2grid").

Data: seqlab.data.grids (arc, digits, mazes, a text file as grids; `--data NAME`); token
layouts: seqlab.tasks.grid_codec (cells are ids 6.., below them PAD MASK BOS SEP NL EOS);
decoding: seqlab.tasks.grid_decode.

Which model reads the grid how (task_options.objective; the default follows the model):

    2D grid model (its config has max_grid), not causal   "masked" (default)
    2D grid model with causal=True                        "raster": the grid shifted by one cell
    1D causal LM (gpt)                                    "raster": the flattened grid, rows + NL

A 2D model is called model(grid [b, gy, gx], condition=None | [b, gy, gx], padding_mask=[b, gy,
gx] (True = a cell)) and returns ModelOutput(logits [b, gy, gx, v]); a 1D LM model(input_ids
[b, t]) -> logits [b, t, v]. The tasks compute their losses from the logits.

grid: learn the distribution of single grids.
  - masked: per example a ratio r = cos(pi/2 u), u ~ U(0, 1), of its cells (at least one) is
    replaced by MASK (mask_schedule "full": every cell); the loss is the cross-entropy of the
    masked cells, over the cell values only. The masked cells' own tokens are never in the
    input, so no prediction sees its label.
  - raster: next-cell prediction in raster order (1D: the NL markers are given, not predicted).
  - Validation loss and bits_per_cell = the NLL of the cells GIVEN THE GRID'S SHAPE, in bits per
    cell. A raster model's is exact: -log2 prod_i p(x_i | x_<i). A masked model's uses the
    chunked-reveal factorization (grid_decode.chunked_nll): a fixed random order of the cells in
    task_options.eval_chunks chunks, each chunk predicted from the cells revealed before it. Its
    product is a valid distribution over grids, so both numbers are code lengths of the same
    grids and compare directly (lower is better). A model that predicts every cell value with
    equal probability scores log2(num_values).
  - Samples: MaskGIT iterative decoding (decode_steps steps, temperature) for a masked model;
    cell by cell (a 1D LM with its KV cache) for a raster model. A prompt (a text grid, rows
    separated by "/" or newlines, "?" = a cell to generate) keeps its given cells fixed.
grid2grid: input grid -> output grid (arc pairs, mazes).
  - 2D model: the input's canvas is the model's `condition`; the output canvas is predicted
    (grid_codec: canvases with size markers). masked: mask_schedule "full" (the default: every
    output cell MASK, the loss over every canvas cell) or "cosine" (a random fraction, as the
    grid task); decoding (task_options.decode) "one_pass" (argmax from an all-MASK canvas) or
    "iterative" (MaskGIT, decode_steps steps, argmax). raster (causal 2D): teacher forcing over
    the shifted output canvas; decoding cell by cell.
  - 1D LM: BOS input SEP output EOS in raster order; the loss over the output part; greedy
    decoding with the KV cache until EOS.
  - decode_metrics: exact_match (the decoded output has the target's size and every cell) and
    cell_accuracy (target cells equal at the same place) over the first train.eval_decode
    pairs of the split; the training-time argmax_accuracy is over the loss's cells.

Budgets: count_tokens is the cells (and markers) a model reads: a 2D model its grid and
condition cells, a 1D LM its sequence without padding.

Which task a run trains when none is named (`resolve_task`, used by the run config): the one
the data is made for, if the model takes it: mazes (also the default data of a grid model)
-> grid2grid; arc, digits, text -> grid. So `seqlab train --model heptapod` solves 9x9 mazes,
`--model heptapod --data digits` models digits, `--model gpt --data mazes` is the raster
baseline of maze solving; `--task grid` with mazes models solved mazes.

Saved state (task.json): the data name, grid size, cell alphabet, data seed and objective, so
eval, generate and --resume rebuild the same task.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seqlab.data.grids import SHAPE_KEEPING, GridData, dihedral, is_grid_data_name, load_grid_data
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.tasks import grid_codec as codec
from seqlab.tasks.base import AtLeast, Task, detach_metrics, reject_unknown_sample_options
from seqlab.tasks.grid_decode import (
    chunk_order,
    chunked_nll,
    decode_1d,
    decode_2d_raster,
    grid_logits,
    maskgit_decode,
)
from seqlab.tasks.grid_render import panels_text, save_grid_png

OBJECTIVES = ("masked", "raster")
MASK_SCHEDULES = ("cosine", "full")
DECODES = ("one_pass", "iterative")
GRID_TASKS = ("grid", "grid2grid")
# The task each grid data set is made for, when the run config names none.
DATA_TASK = {"mazes": "grid2grid", "arc": "grid", "digits": "grid", "text": "grid"}
DEFAULT_DATA = "mazes"  # a grid model's data when none is given (generated: needs no extra)
SAMPLE_GRIDS = 4
DECODE_BATCH = 64


def resolve_task(model_task: str, accepted: tuple[str, ...], source: str | None) -> str:
    """The task of a run whose config names none: the task its grid data is made for (DATA_TASK)
    when the model takes it, else the model's own. No data means the model's own data: mazes for
    a grid model."""
    if source is None:
        name = DEFAULT_DATA if model_task in GRID_TASKS else None
    else:
        name = str(source) if is_grid_data_name(source) else None
    wanted = DATA_TASK.get(name, model_task) if name else model_task
    return wanted if wanted in accepted else model_task


def _positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"task_options.{key}={value!r} must be an int >= 1")


def _choice(key: str, value, allowed: tuple, none_means: str) -> None:
    if value is not None and value not in allowed:
        raise ConfigError(
            f"task_options.{key}={value!r} must be one of {', '.join(allowed)} or null ({none_means})"
        )


@dataclass
class GridOptions:
    """task_options shared by the grid tasks (`--set task_options.KEY=VALUE`)."""

    objective: str | None = None  # masked | raster; None = by model kind (module docstring)
    mask_schedule: str | None = None  # cosine | full; None = grid: cosine, grid2grid: full
    decode_steps: int = 8  # MaskGIT steps (grid samples; grid2grid decode=iterative)
    augment: bool | None = None  # symmetries (+ arc's colour permutations) of training examples; None = arc
    data_seed: int = 0  # mazes: the generator (and the fixed held-out set); digits: the split
    val_size: int = 400  # mazes: size of the held-out set

    def __post_init__(self):
        _choice("objective", self.objective, OBJECTIVES, "by model kind")
        _choice("mask_schedule", self.mask_schedule, MASK_SCHEDULES, "the task's default")
        _positive_int("decode_steps", self.decode_steps)
        _positive_int("val_size", self.val_size)
        if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int) or self.data_seed < 0:
            raise ConfigError(f"task_options.data_seed={self.data_seed!r} must be an int >= 0")


@dataclass(frozen=True)
class ModelKind:
    grid: bool  # a 2D grid model (its config has max_grid); else a 1D causal LM
    causal: bool


def model_kind(model_config) -> ModelKind:
    fields = {f.name for f in dataclasses.fields(model_config)}
    if "max_grid" in fields:
        return ModelKind(grid=True, causal=bool(getattr(model_config, "causal", False)))
    if "max_seq_len" in fields:
        return ModelKind(grid=False, causal=True)
    raise ConfigError(
        f"the grid tasks need a 2D grid model (a config with max_grid, e.g. heptapod) or a causal LM "
        f"with max_seq_len (e.g. gpt, reading the grid in raster order); "
        f"{type(model_config).__name__} is neither"
    )


def resolve_objective(kind: ModelKind, objective: str | None) -> str:
    if objective is None:
        return "raster" if (not kind.grid or kind.causal) else "masked"
    if not kind.grid and objective == "masked":
        raise ConfigError(
            "task_options.objective=masked needs a bidirectional 2D grid model; a 1D LM reads the grid "
            "in raster order: drop the option (or set it to raster)"
        )
    if kind.grid and not kind.causal and objective == "raster":
        raise ConfigError(
            "task_options.objective=raster needs a causal model (a bidirectional one would see the cell "
            "it predicts): set model.causal=true, or use objective=masked"
        )
    return objective


def parse_prompt(prompt: str, data: GridData) -> tuple[np.ndarray, np.ndarray]:
    """A text grid ("/" or newlines between rows; "?" = unknown) -> (values, known) [gy, gx].
    Fixed-shape data fill the data's shape (missing cells unknown)."""
    rows = prompt.split("\n") if "\n" in prompt else prompt.split("/")
    index = {c: i for i, c in enumerate(data.cell_chars)}
    bad = sorted({c for r in rows for c in r if c != "?" and c not in index})
    if bad:
        raise ConfigError(
            f"the prompt has characters that are no cell of the {data.name} grids: {''.join(bad)!r}; "
            f"cells are {data.cell_chars!r}, '?' marks a cell to generate, '/' separates rows"
        )
    gy, gx = data.max_grid if data.fixed_shape else (len(rows), max(len(r) for r in rows))
    if len(rows) > gy or max(len(r) for r in rows) > gx:
        raise ConfigError(f"the prompt is larger than the {data.name} grids ({gy}x{gx})")
    values = np.zeros((gy, gx), dtype=np.int64)
    known = np.zeros((gy, gx), dtype=bool)
    for y, row in enumerate(rows):
        for x, c in enumerate(row):
            if c != "?":
                values[y, x], known[y, x] = index[c], True
    return values, known


class _GridTaskBase(Task):
    """What the two grid tasks share: the data, the model kind, requirements, state, drawing
    and augmenting examples."""

    primary_loss_key = "cell_loss"
    default_schedule = "cosine"

    def __init__(self, data: GridData, options: GridOptions, kind: ModelKind, *, seed: int = 0):
        self.data = data
        self.options = options
        self.kind = kind
        self.objective = resolve_objective(kind, options.objective)
        self.mask_schedule = options.mask_schedule or self.default_schedule
        self.augment = (data.name == "arc") if options.augment is None else options.augment
        self.seed = seed
        self.num_values = data.num_values
        self.vocab_size = codec.vocab_size(data.num_values)
        self.cell_ids = torch.arange(codec.CELL0, self.vocab_size)

    @classmethod
    def from_config(cls, cfg, model_config, state: dict[str, Any] | None = None):
        options = cls.parse_options(cfg.task_options)
        kind = model_kind(model_config)
        d = cfg.data
        if state is not None and not {"data", "num_values", "cell_chars", "grid"} <= set(state):
            raise CheckpointError(
                f"the run's task.json holds no grid data description for the {cls.name} task; the run "
                "directory is incomplete or was edited: retrain"
            )
        source = d.source
        grid = d.grid
        alphabet = None
        if state is not None:
            alphabet = state["cell_chars"] if state.get("style") == "text" else None
            if source == state["data"] or (source is None and state["data"] == DEFAULT_DATA):
                grid = state["grid"]
        data = load_grid_data(
            source,
            grid=grid,
            seed=options.data_seed,
            val_fraction=d.val_fraction,
            val_size=options.val_size,
            encoding=d.encoding,
            alphabet=alphabet,
        )
        if state is not None and data.num_values != state["num_values"]:
            raise DataError(
                f"the run was trained on grids of {state['num_values']} cell values ({state['data']}); "
                f"{data.name} has {data.num_values}: evaluate on data of the same kind"
            )
        cls.check_data(data)
        return cls(data, options, kind, seed=cfg.train.seed)

    @classmethod
    def check_data(cls, data: GridData) -> None:
        """Raise DataError when the data cannot feed this task."""

    # ----- sizes

    def raster_length(self) -> int:
        raise NotImplementedError

    def model_requirements(self) -> dict[str, Any]:
        if self.kind.grid:
            return {
                "vocab_size": AtLeast(self.vocab_size),
                "condition_vocab_size": self.condition_vocab_size(),
                "max_grid": list(self.data.max_grid),
            }
        return {"vocab_size": AtLeast(self.vocab_size), "max_seq_len": AtLeast(self.raster_length())}

    def condition_vocab_size(self):
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.name,
            "grid": list(self.data.max_grid),
            "num_values": self.data.num_values,
            "cell_chars": self.data.cell_chars,
            "style": self.data.style,
            "data_seed": self.options.data_seed,
            "objective": self.objective,
        }

    # ----- examples

    def _augment(self, grids: list[np.ndarray], gen: torch.Generator) -> list[np.ndarray]:
        """One random symmetry (and colour permutation) applied to all of `grids` (a pair)."""
        square = self.data.max_grid[0] == self.data.max_grid[1]
        choices = range(8) if square else SHAPE_KEEPING
        k = list(choices)[int(torch.randint(len(choices), (1,), generator=gen))]
        out = [dihedral(g, k) for g in grids]
        if self.data.colour_values:
            perm = np.arange(self.num_values)
            colours = np.asarray(self.data.colour_values)
            perm[colours] = colours[torch.randperm(len(colours), generator=gen).numpy()]
            out = [perm[g] for g in out]
        return out

    def _draw_pairs(self, split: str, n: int, gen: torch.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        if split == "train" and self.data.draw is not None:
            seeds = torch.randint(2**62, (n,), generator=gen).tolist()
            pairs = [self.data.draw(s) for s in seeds]
        else:
            pool = self._pool(split, "pairs")
            pairs = [pool[i] for i in torch.randint(len(pool), (n,), generator=gen).tolist()]
        if split == "train" and self.augment:
            pairs = [tuple(self._augment(list(p), gen)) for p in pairs]
        return pairs

    def _draw_grids(self, split: str, n: int, gen: torch.Generator) -> list[np.ndarray]:
        if split == "train" and self.data.draw is not None:
            grids = [self.data.draw(s)[1] for s in torch.randint(2**62, (n,), generator=gen).tolist()]
        else:
            pool = self._pool(split, "grids")
            grids = [pool[i] for i in torch.randint(len(pool), (n,), generator=gen).tolist()]
        if split == "train" and self.augment:
            grids = [self._augment([g], gen)[0] for g in grids]
        return grids

    def _pool(self, split: str, what: str) -> list:
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; the grid tasks have train and val")
        pool = getattr(self.data, what)[split]
        if not pool:
            raise DataError(f"{self.data.name} has no {split} {what}")
        return pool

    def _mask(self, real: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Which real cells to mask [b, gy, gx]: ceil(r n) of each grid's n cells (at least one),
        r = cos(pi/2 u), u ~ U(0, 1) per grid; every cell with mask_schedule full."""
        if self.mask_schedule == "full":
            return real.clone()
        b = real.shape[0]
        flat = real.flatten(1)
        n = flat.sum(1)
        ratio = torch.cos(math.pi / 2 * torch.rand(b, generator=gen))
        count = torch.ceil(ratio * n).long().clamp(min=1)
        noise = torch.rand(flat.shape, generator=gen).masked_fill(~flat, 2.0)
        rank = torch.empty_like(flat, dtype=torch.long).scatter_(
            1, noise.argsort(1), torch.arange(flat.shape[1]).expand(b, -1)
        )
        return ((rank < count[:, None]) & flat).view_as(real)

    # ----- losses

    @staticmethod
    def _metrics(loss: torch.Tensor, right: torch.Tensor, count: torch.Tensor, out) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "cell_loss": loss.detach(),
            "argmax_accuracy": (right / count.clamp(min=1)).detach(),
        }
        metrics.update({k: v.detach() for k, v in out.aux_losses.items()})
        metrics.update(detach_metrics(out.metrics))
        return metrics

    @staticmethod
    def _total(loss: torch.Tensor, out) -> torch.Tensor:
        return loss + sum(out.aux_losses.values()) if out.aux_losses else loss

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        return {"bits_per_cell": mean_loss / math.log(2)}

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        if "input_ids" in batch:
            return int((batch["input_ids"] != codec.PAD).sum())
        n = int(batch["padding_mask"].sum()) if "padding_mask" in batch else batch["grid"].numel()
        return n + (batch["condition"].numel() if "condition" in batch else 0)

    @staticmethod
    def _device(model) -> torch.device:
        param = next(model.parameters(), None)
        return torch.device("cpu") if param is None else param.device

    def _write_png(self, run_dir: Path | None, name: str, rows: list, titles: list[str], heading: str) -> str:
        if run_dir is None:
            return ""
        path = save_grid_png(
            Path(run_dir) / name,
            rows,
            titles,
            style=self.data.style,
            num_values=self.num_values,
            chars=self.data.cell_chars,
            heading=heading,
        )
        return f"\n(PNG: {path})"


class GridTask(_GridTaskBase):
    """Grid modeling (module docstring): masked with a cosine mask-ratio schedule, or raster."""

    name = "grid"

    @dataclass
    class Options(GridOptions):
        eval_chunks: int = 8  # chunks of the masked model's chunked-reveal NLL (bits per cell)
        temperature: float = 1.0  # sampling temperature of samples (0 = argmax)

        def __post_init__(self):
            super().__post_init__()
            _positive_int("eval_chunks", self.eval_chunks)
            if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
                raise ConfigError(f"task_options.temperature={self.temperature!r} must be >= 0 (0 = argmax)")

    def raster_length(self) -> int:
        gy, gx = self.data.max_grid
        return gy * (gx + 1)  # BOS + rows with NL, less the last NL (never read)

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        grids = self._draw_grids(split, batch_size, generator)
        if not self.kind.grid:
            seqs = [codec.raster_grid_sequence(g) for g in grids]
            return {
                "input_ids": codec.to_tensor(codec.pad_sequences([s[0] for s in seqs], codec.PAD)),
                "targets": codec.to_tensor(codec.pad_sequences([s[1] for s in seqs], -100)),
            }
        tokens = codec.to_tensor(codec.pad_stack([codec.cells(g) for g in grids]))
        real = tokens != codec.PAD
        if self.objective == "raster":
            shifted = codec.pad_stack([codec.shift_raster(codec.cells(g)) for g in grids])
            return {
                "grid": codec.to_tensor(shifted),
                "targets": tokens.masked_fill(~real, -100),
                "padding_mask": real,
            }
        if split != "train":
            return {
                "tokens": tokens,
                "padding_mask": real,
                "chunk": chunk_order(real, self.options.eval_chunks, generator),
            }
        masked = self._mask(real, generator)
        return {
            "grid": tokens.masked_fill(masked, codec.MASK),
            "targets": tokens.masked_fill(~masked, -100),
            "padding_mask": real,
        }

    def _cell_ce(self, logits: torch.Tensor, targets: torch.Tensor):
        """(mean CE over targets != -100 with a softmax over the cell values only, argmax hits, count)."""
        lo = codec.CELL0
        cell_logits = logits[..., lo : lo + self.num_values].float()
        valid = targets != -100
        shifted = torch.where(valid, targets - lo, torch.full_like(targets, -100))
        loss = F.cross_entropy(
            cell_logits.reshape(-1, self.num_values), shifted.reshape(-1), ignore_index=-100
        )
        right = ((cell_logits.argmax(-1) == shifted) & valid).sum()
        return loss, right, valid.sum()

    def loss(self, model, batch):
        if "input_ids" in batch:
            out = model(batch["input_ids"])
            loss, right, count = self._cell_ce(out.logits, batch["targets"])
        elif "chunk" in batch:
            nll, count, right, outs = chunked_nll(
                model,
                batch["tokens"],
                batch["padding_mask"],
                batch["chunk"],
                self.options.eval_chunks,
                codec.CELL0,
                codec.CELL0 + self.num_values,
            )
            loss, out = nll / count.clamp(min=1), outs[-1]
        else:
            logits, out = grid_logits(model, batch["grid"], None, batch["padding_mask"])
            loss, right, count = self._cell_ce(logits, batch["targets"])
        return self._total(loss, out), self._metrics(loss, right, count, out)

    def decode_metrics(self, model, split: str, limit: int) -> dict[str, float]:
        return {}  # bits per cell is the measure of a generative grid model

    # ----- samples

    def example_grid(self, split: str = "val") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first grid of `split` as the model reads it: tokens [gy, gx] (shifted by one cell
        for the raster objective), and no condition."""
        tokens = codec.cells(self._pool(split, "grids")[0])
        if self.objective == "raster" and self.kind.grid:
            tokens = codec.shift_raster(tokens)
        return codec.to_tensor(tokens), None

    SAMPLE_OPTIONS = ("max_new_tokens", "seed", "temperature", "prompt")

    @torch.no_grad()
    def sample(self, model, run_dir: Path | None = None, **options) -> str:
        """Generated grids, as text (returned) and a PNG (RUN_DIR/grid_samples.png). Options:
        max_new_tokens = the number of grids (default 4), seed (train.seed), temperature
        (task_options.temperature), prompt (a text grid: '?' = generate, '/' between rows; its
        given cells stay fixed). Shapes: the prompt's, else the first validation grids'."""
        reject_unknown_sample_options(self.name, options, self.SAMPLE_OPTIONS)
        n = options.get("max_new_tokens", SAMPLE_GRIDS)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_new_tokens (the number of grids) must be an int >= 1, got {n!r}")
        temperature = options.get("temperature", self.options.temperature)
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
        device = self._device(model)
        gen = torch.Generator(device=device).manual_seed(options.get("seed", self.seed))
        if options.get("prompt"):
            values, known = parse_prompt(options["prompt"], self.data)
            shapes, givens = [values.shape] * n, [(values, known)] * n
        else:
            val = self._pool("val", "grids")
            shapes = [val[i % len(val)].shape for i in range(n)]
            givens = [(np.zeros(s, dtype=np.int64), np.zeros(s, dtype=bool)) for s in shapes]
        was_training = model.training
        model.eval()
        try:
            grids = self.generate_grids(model, givens, temperature, gen, device)
        finally:
            model.train(was_training)
        how = (
            f"MaskGIT, {self.options.decode_steps} steps"
            if self.objective == "masked"
            else "raster order, cell by cell"
        )
        heading = f"{self.data.name}: {n} generated grids ({how}, temperature {temperature})"
        titles = [f"sample {i + 1}" for i in range(n)]
        text = heading + "\n" + panels_text([grids], titles, self.data.cell_chars)
        return text + self._write_png(run_dir, "grid_samples.png", [grids], titles, heading)

    def generate_grids(self, model, givens, temperature, gen, device) -> list[np.ndarray]:
        """Grids of the given shapes: `givens` = [(values [gy, gx], known [gy, gx] bool)], the
        known cells kept, the rest decoded (MaskGIT for a masked model, else raster order)."""
        tokens = codec.to_tensor(codec.pad_stack([codec.cells(v) for v, _ in givens])).to(device)
        known = (
            torch.from_numpy(codec.pad_stack([k.astype(np.int64) for _, k in givens], fill=0))
            .bool()
            .to(device)
        )
        shapes = [v.shape for v, _ in givens]
        cells = self.cell_ids.to(device)
        if self.objective == "masked":
            real = codec.to_tensor(
                codec.pad_stack([np.ones(s, dtype=np.int64) for s in shapes], fill=0)
            ).bool()
            out = maskgit_decode(
                model,
                tokens,
                known,
                cells,
                steps=self.options.decode_steps,
                temperature=temperature,
                generator=gen,
                padding_mask=real.to(device),
            )
            return [out[i, : s[0], : s[1]].cpu().numpy() - codec.CELL0 for i, s in enumerate(shapes)]
        forced = torch.where(known, tokens, torch.full_like(tokens, -1))
        if self.kind.grid:
            results: dict[int, np.ndarray] = {}
            for shape in sorted(set(shapes)):
                rows = [i for i, s in enumerate(shapes) if s == shape]
                sub = forced[rows][:, : shape[0], : shape[1]]
                out = decode_2d_raster(
                    model,
                    shape,
                    len(rows),
                    cells,
                    forced=sub,
                    temperature=temperature,
                    generator=gen,
                    device=device,
                )
                for j, i in enumerate(rows):
                    results[i] = out[j].cpu().numpy() - codec.CELL0
            return [results[i] for i in range(len(shapes))]
        # 1D LM: after BOS, each row's cells (sampled, or the prompt's) then a given NL.
        layouts = []
        for i, (gy, gx) in enumerate(shapes):
            rows = torch.cat([forced[i, :gy, :gx].cpu(), torch.full((gy, 1), codec.NL)], 1)
            layouts.append(rows.reshape(-1)[:-1].numpy())
        steps = max(len(lay) for lay in layouts)
        forced_seq = codec.to_tensor(codec.pad_sequences(layouts, codec.PAD)).to(device)
        prefix = torch.full((len(shapes), 1), codec.BOS, dtype=torch.long, device=device)
        new = decode_1d(
            model, prefix, steps, cells, forced=forced_seq, temperature=temperature, generator=gen
        )
        out = []
        for i, (gy, gx) in enumerate(shapes):
            seq = new[i, : gy * (gx + 1) - 1].cpu()
            seq = torch.cat([seq, torch.tensor([codec.NL])]).view(gy, gx + 1)[:, :gx]
            out.append(seq.numpy() - codec.CELL0)
        return out


class Grid2GridTask(_GridTaskBase):
    """Input grid -> output grid (module docstring): arc pairs, mazes."""

    name = "grid2grid"
    default_schedule = "full"

    @dataclass
    class Options(GridOptions):
        decode: str = "one_pass"  # masked 2D models: one_pass | iterative (MaskGIT, decode_steps)

        def __post_init__(self):
            super().__post_init__()
            if self.decode not in DECODES:
                raise ConfigError(f"task_options.decode={self.decode!r} must be one of {', '.join(DECODES)}")

    @classmethod
    def check_data(cls, data: GridData) -> None:
        if not data.has_pairs:
            raise DataError(
                f"grid2grid needs input/output pairs and {data.name} has single grids: use --data mazes or "
                "--data arc, or --task grid to model these grids"
            )

    @property
    def canvas_shape(self) -> tuple[int, int]:
        return self.data.max_grid

    def condition_vocab_size(self):
        return AtLeast(self.vocab_size)

    def raster_length(self) -> int:
        return codec.raster_pair_length(self.canvas_shape, self.canvas_shape)

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        pairs = self._draw_pairs(split, batch_size, generator)
        if not self.kind.grid:
            seqs = [codec.raster_pair_sequence(i, o) for i, o in pairs]
            return {
                "input_ids": codec.to_tensor(codec.pad_sequences([s[0] for s in seqs], codec.PAD)),
                "targets": codec.to_tensor(codec.pad_sequences([s[1] for s in seqs], -100)),
            }
        shape = self.canvas_shape
        condition = codec.to_tensor(np.stack([codec.canvas(i, shape) for i, _ in pairs]))
        target = codec.to_tensor(np.stack([codec.canvas(o, shape) for _, o in pairs]))
        if self.objective == "raster":
            grid = codec.to_tensor(np.stack([codec.shift_raster(t) for t in target.numpy()]))
            return {"grid": grid, "condition": condition, "targets": target}
        if split == "train" and self.mask_schedule == "cosine":
            masked = self._mask(torch.ones_like(target, dtype=torch.bool), generator)
        else:
            masked = torch.ones_like(target, dtype=torch.bool)
        return {
            "grid": target.masked_fill(masked, codec.MASK),
            "condition": condition,
            "targets": target.masked_fill(~masked, -100),
        }

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        """Bits per predicted target position: cells and size markers of the output canvas (2D)
        or of the output's raster rows (1D), so not comparable across the two layouts; the
        decoding metrics are."""
        return {"bits_per_target": mean_loss / math.log(2)}

    def loss(self, model, batch):
        if "input_ids" in batch:
            out = model(batch["input_ids"])
            logits = out.logits
        else:
            logits, out = grid_logits(model, batch["grid"], batch["condition"], None)
        targets = batch["targets"]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
        )
        valid = targets != -100
        right = ((logits.argmax(-1) == targets) & valid).sum()
        return self._total(loss, out), self._metrics(loss, right, valid.sum(), out)

    # ----- decoding

    def _allowed(self, device) -> torch.Tensor:
        """What a decoder may write: cells, and (2D canvases) the size markers and PAD beyond."""
        extra = [codec.NL, codec.EOS] + ([codec.PAD] if self.kind.grid else [])
        return torch.cat([torch.tensor(extra), self.cell_ids]).to(device)

    @torch.no_grad()
    def solve(self, model, inputs: list[np.ndarray], canvas: tuple[int, int] | None = None) -> list:
        """The model's outputs for input grids: cell-value arrays (-1 = not a cell), or ragged
        rows for a 1D LM whose output is not rectangular. `canvas` (gy, gx) is the output canvas
        (default: the data's largest grid, what the model was trained on)."""
        device = self._device(model)
        was_training = model.training
        model.eval()
        try:
            out = []
            for first in range(0, len(inputs), DECODE_BATCH):
                out += self._solve_batch(model, inputs[first : first + DECODE_BATCH], device, canvas)
            return out
        finally:
            model.train(was_training)

    def _solve_batch(self, model, inputs: list[np.ndarray], device, canvas=None) -> list:
        allowed = self._allowed(device)
        shape = tuple(canvas or self.canvas_shape)
        if not self.kind.grid:
            prefixes = [codec.raster_pair_prefix(i) for i in inputs]
            width = max(len(p) for p in prefixes)
            ids = np.full((len(prefixes), width), codec.PAD, dtype=np.int64)
            mask = np.zeros_like(ids)
            for r, p in enumerate(prefixes):  # left-padded: every row ends with its SEP
                ids[r, width - len(p) :], mask[r, width - len(p) :] = p, 1
            ragged = len({len(p) for p in prefixes}) > 1
            new = decode_1d(
                model,
                codec.to_tensor(ids).to(device),
                shape[0] * (shape[1] + 1) + 1,
                allowed,
                prefix_mask=codec.to_tensor(mask).to(device) if ragged else None,
                stop_token=codec.EOS,
            )
            return [codec.parse_raster(row) for row in new.cpu().tolist()]
        condition = codec.to_tensor(np.stack([codec.canvas(i, shape) for i in inputs])).to(device)
        b = len(inputs)
        if self.objective == "raster":
            pred = decode_2d_raster(model, shape, b, allowed, condition=condition, device=device)
        elif self.options.decode == "iterative":
            blank = torch.full((b, *shape), codec.MASK, dtype=torch.long, device=device)
            pred = maskgit_decode(
                model,
                blank,
                torch.zeros_like(blank, dtype=torch.bool),
                allowed,
                steps=self.options.decode_steps,
                temperature=0,
                condition=condition,
            )
        else:
            blank = torch.full((b, *shape), codec.MASK, dtype=torch.long, device=device)
            logits, _ = grid_logits(model, blank, condition, None)
            pred = allowed[logits[..., allowed].argmax(-1)]
        return [codec.crop_canvas(p) for p in pred.cpu().numpy()]

    def decode_metrics(self, model, split: str, limit: int) -> dict[str, float]:
        pairs = self._pool(split, "pairs")[:limit]
        preds = self.solve(model, [i for i, _ in pairs])
        exact = right = cells = 0
        for pred, (_, target) in zip(preds, pairs):
            e, r = codec.compare(pred, target)
            exact, right, cells = exact + e, right + r, cells + target.size
        return {"exact_match": exact / len(pairs), "cell_accuracy": right / max(cells, 1)}

    def example_grid(self, split: str = "val") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first pair of `split` as the model reads it: the output canvas (all MASK for the
        masked objective; the target shifted by one cell for raster) and the input canvas."""
        inp, out = self._pool(split, "pairs")[0]
        target = codec.canvas(out, self.canvas_shape)
        grid = codec.shift_raster(target) if self.objective == "raster" else np.full_like(target, codec.MASK)
        return codec.to_tensor(grid), codec.to_tensor(codec.canvas(inp, self.canvas_shape))

    SAMPLE_OPTIONS = ("max_new_tokens",)

    def sample(self, model, run_dir: Path | None = None, **options) -> str:
        """The first validation pairs solved: input | prediction | target, as text (returned)
        and a PNG (RUN_DIR/grid2grid_samples.png). Options: max_new_tokens = the number of
        pairs (default 4)."""
        reject_unknown_sample_options(self.name, options, self.SAMPLE_OPTIONS)
        n = options.get("max_new_tokens", SAMPLE_GRIDS)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_new_tokens (the number of pairs) must be an int >= 1, got {n!r}")
        pairs = self._pool("val", "pairs")[:n]
        preds = self.solve(model, [i for i, _ in pairs])
        solved = sum(codec.compare(p, t)[0] for p, (_, t) in zip(preds, pairs))
        heading = f"{self.data.name}: {len(pairs)} validation pairs, {solved} solved exactly"
        rows = [[inp, pred, target] for pred, (inp, target) in zip(preds, pairs)]
        titles = ["input", "prediction", "target"]
        text = heading + "\n" + panels_text(rows, titles, self.data.cell_chars)
        return text + self._write_png(run_dir, "grid2grid_samples.png", rows, titles, heading)


__all__ = [
    "DATA_TASK",
    "GridOptions",
    "Grid2GridTask",
    "GridTask",
    "model_kind",
    "parse_prompt",
    "resolve_objective",
    "resolve_task",
]
