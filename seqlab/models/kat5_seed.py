"""The KAT5 blog's public API (seed 004, "KAN + T5"), on seqlab's kat5 model and KANLinear.

The blog's demo runs as written:

    model = Transformer(inp_vocab=21, model_dimension=128, n_heads=8, _num_layers=2)
    output = model(X_batch, Y_batch, x_mask=None, y_mask=None)   # log-probs [b, t_y, 21]
    loss = nn.CrossEntropyLoss()(output.view(-1, 21), Y_batch.view(-1))

and `python -m seqlab.models.kat5_seed` runs that demo (random integer sequences, Adam 1e-4,
5 epochs, batch 10) and prints the loss of every epoch.

- `Transformer(inp_vocab, model_dimension, n_heads, _num_layers)`: seqlab.models.kat5
  (T5 v1.1 with KAN feed-forwards) with dim = model_dimension, num_heads = n_heads, head_dim =
  model_dimension / n_heads, _num_layers encoder and _num_layers decoder layers, the seed's
  dropout 0.2, vocab_size = inp_vocab, and as feed-forward the seed's KANetwork shape: KAN
  c -> c -> c with the seed's free-knot cubic basis (10 knots per input, per edge). forward(x,
  y, x_mask=None, y_mask=None) returns log p(y_t | y_<t, x) [b, t_y, inp_vocab]: the decoder is
  causal and reads y shifted right behind the start id 0, so output t never sees y_t (the
  seed's decoder read its unshifted target without a causal mask: a copy task in disguise).
  Ids are the seed's own (0 doubles as the start token and padding). Masks: x_mask [b, s]
  (1/True = token) masks source padding; x_mask=True (a bool, as the seed's flag) masks the
  source's id-0 positions; y_mask [b, t] (1 = token) marks target padding, which the causal
  decoder never lets reach a real position to its left (mask it in your loss); a bool y_mask
  (the seed's flag) changes nothing.
- `KANetwork(input_dim, output_dim, num_knots=10)`: KANLinear input_dim -> output_dim ->
  output_dim with the truncated-power basis of num_knots knots per input (grid_size =
  num_knots - 3, cubic), so every output mixes every input (the seed's Jacobian was diagonal).
  x [..., input_dim] -> [..., output_dim].
- `SplineFunction(input_dim, num_knots)`: one univariate function per channel, f_i(x_i) =
  sum_k c[i, k] ((t_ik - x~_i)_+ / w)^3 with x~ = tanh squashed into (-1, 1) and w = 2 (the
  basis of KANLinear(basis="truncated_power") on its diagonal edges), so it stays bounded;
  the seed's max(0, t - x)^3 grew like x^3 (~5e6 for unit inputs through two layers).
  x [N, input_dim] -> [N, input_dim]; element-wise by definition, as the seed's.
- `P_E(model_dimension, expected_max_sequence_length=5000)`: the sinusoidal table
  PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), forward(e) = e +
  PE[:t] (added once). Kept for API compatibility only: the Transformer's model takes
  positions from T5's relative position bias, so positions enter once (the seed added them
  twice: embeddings + P_E(embeddings)). Departure: the seed zeroed the whole row of position 0
  (cos 0 = 1 here).
"""

import math

import numpy as np
import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.kan import SILU_SQUARE_MEAN, KANLinear
from seqlab.models.kat5 import KAT5Config, KAT5Model
from seqlab.models.t5 import shift_right
from seqlab.ops.bspline import truncated_power_basis

SEED_DROPOUT = 0.2
KAN_ORDER = 3  # the seed's cubic max(0, t - x)^3


def _kan_options(num_knots: int) -> dict:
    if isinstance(num_knots, bool) or not isinstance(num_knots, int) or num_knots < KAN_ORDER + 1:
        raise ConfigError(f"num_knots={num_knots!r} must be an int >= {KAN_ORDER + 1} (cubic spline)")
    return {"grid_size": num_knots - KAN_ORDER, "spline_order": KAN_ORDER, "basis": "truncated_power"}


class P_E(nn.Module):  # the seed's name
    def __init__(self, model_dimension: int, expected_max_sequence_length: int = 5000):
        super().__init__()
        position = np.arange(expected_max_sequence_length)[:, None]
        rates = np.power(10000.0, 2 * (np.arange(model_dimension) // 2) / model_dimension)
        table = position / rates  # [t, c]
        table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
        self.register_buffer("pos_en", torch.tensor(table, dtype=torch.float32), persistent=False)

    def forward(self, embeddings: Tensor) -> Tensor:
        """embeddings [b, t, c] -> embeddings + PE[:t]."""
        t = embeddings.shape[1]
        if t > self.pos_en.shape[0]:
            raise ValueError(f"P_E holds {self.pos_en.shape[0]} positions, got a sequence of {t}")
        return embeddings + self.pos_en[:t].to(embeddings.dtype)


class SplineFunction(nn.Module):
    def __init__(self, input_dim: int, num_knots: int):
        super().__init__()
        _kan_options(num_knots)
        self.input_dim, self.num_knots = input_dim, num_knots
        steps = torch.arange(1, num_knots + 1, dtype=torch.float32) / num_knots
        self.knots = nn.Parameter((-1 + 2 * steps).expand(input_dim, -1).clone())  # [in, K] over (-1, 1]
        self.coefs = nn.Parameter(torch.randn(input_dim, num_knots) / math.sqrt(num_knots))

    def forward(self, x: Tensor) -> Tensor:
        """x [N, input_dim] -> [N, input_dim]: each channel through its own spline."""
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"SplineFunction expects [N, {self.input_dim}], got {tuple(x.shape)}")
        basis = truncated_power_basis(torch.tanh(x), self.knots, KAN_ORDER, 2.0)  # [N, in, K], in [0, 1]
        return (basis * self.coefs).sum(-1)


class KANetwork(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, num_knots: int = 10):
        super().__init__()
        options = {**_kan_options(num_knots), "grid_range": (-2.0, 2.0)}
        self.input_dim, self.output_dim, self.num_knots = input_dim, output_dim, num_knots
        # The first layer's gain keeps its output about unit-variance (as seqlab's kan feed-forward).
        gain = 1 / math.sqrt(SILU_SQUARE_MEAN)
        self.layers = nn.ModuleList(
            [
                KANLinear(input_dim, output_dim, init_scale=gain, **options),
                KANLinear(output_dim, output_dim, **options),
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [..., input_dim] (the seed passes [b, t, input_dim]) -> [..., output_dim]."""
        for layer in self.layers:
            x = layer(x)
        return x


class Transformer(nn.Module):
    def __init__(self, inp_vocab: int, model_dimension: int, n_heads: int, _num_layers: int):
        super().__init__()
        if n_heads < 1 or model_dimension % n_heads:
            raise ConfigError(
                f"model_dimension={model_dimension} must be a multiple of n_heads={n_heads} (head width)"
            )
        self.inp_vocab = inp_vocab
        self.config = KAT5Config(
            vocab_size=inp_vocab,
            dim=model_dimension,
            head_dim=model_dimension // n_heads,
            num_heads=n_heads,
            num_layers=_num_layers,
            dropout=SEED_DROPOUT,
            kan_hidden_dim=model_dimension,  # the seed's KANetwork(c, c): c -> c -> c
            # forward returns log-probs only, so the KAN regularizer (an aux loss) is off.
            ffn_options={**_kan_options(10), "reg_coef": 0.0},
        )
        self.model = KAT5Model(self.config)

    @staticmethod
    def _source_mask(x: Tensor, x_mask) -> Tensor | None:
        if x_mask is None or x_mask is False:
            return None
        if x_mask is True:
            return (x != 0).long()  # the seed's flag: id 0 is padding
        if not isinstance(x_mask, Tensor) or x_mask.shape != x.shape:
            raise ValueError(
                f"x_mask must be None, a bool, or a [batch, source] mask like x {tuple(x.shape)} (1 = token)"
            )
        return x_mask.long()

    def forward(self, x: Tensor, y: Tensor, x_mask=None, y_mask=None) -> Tensor:
        """log p(y_t | y_<t, x): x [b, s], y [b, t] -> [b, t, inp_vocab] (see the module docstring)."""
        labels = y
        if isinstance(y_mask, Tensor):
            if y_mask.shape != y.shape:
                raise ValueError(f"y_mask must be a [batch, target] mask like y {tuple(y.shape)} (1 = token)")
            labels = y.masked_fill(y_mask == 0, -100)  # padding enters the decoder as pad (0)
        out = self.model(
            x, attention_mask=self._source_mask(x, x_mask), decoder_input_ids=shift_right(labels)
        )
        return torch.log_softmax(out.logits.float(), dim=-1)


def demo(samples: int = 100, epochs: int = 5, seed: int = 0, log=print) -> list[float]:
    """The blog's training demo: random X, Y in [1, 21) of length 20, Transformer(21, 128, 8, 2),
    Adam 1e-4, gradient clipping 1, batch 10. Returns the mean loss of every epoch.

    X and Y are independent, so no model can beat the uniform guess over 20 ids (ln 20 = 3.00)
    on fresh data: the loss falls from its start to about that, never toward 0 (the seed's
    unshifted, non-causal decoder could copy its label: that is what its falling loss showed)."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    x_train = torch.randint(1, 21, (samples, 20))
    y_train = torch.randint(1, 21, (samples, 20))
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=10, shuffle=True)
    model = Transformer(inp_vocab=21, model_dimension=128, n_heads=8, _num_layers=2)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0001)
    history = []
    for epoch in range(epochs):
        total = 0.0
        for x_batch, y_batch in loader:
            optimizer.zero_grad()
            output = model(x_batch, y_batch, x_mask=None, y_mask=None)
            loss = criterion(output.view(-1, 21), y_batch.view(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            total += loss.item()
        history.append(total / len(loader))
        log(f"Epoch {epoch + 1}, Loss: {history[-1]}")
    return history


__all__ = ["KANetwork", "P_E", "SplineFunction", "Transformer", "demo"]


if __name__ == "__main__":
    demo()
