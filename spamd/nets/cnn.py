"""TextCNN (Kim 2014): embedding → parallel 1-D convolutions → max-over-time → one logit."""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spamd.nets import fold_ids


@dataclass(frozen=True)
class CNNConfig:
    buckets: int = 1 << 17  # rows of the embedding table (hashed token space is folded into it)
    embed_dim: int = 48
    widths: tuple[int, ...] = (1, 2, 3, 5)  # filter widths in tokens; each width has its own filters
    filters: int = 96  # filters per width
    dropout: float = 0.3
    window: int = 400  # the CNN reads the first `window` tokens


class TextCNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.buckets, cfg.embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.embed_dim, cfg.filters, w) for w in cfg.widths)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.filters * len(cfg.widths), 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 → logits (B,)."""
        ids = fold_ids(ids[:, : self.cfg.window], self.cfg.buckets)
        if ids.shape[1] < max(self.cfg.widths):
            ids = nn.functional.pad(ids, (0, max(self.cfg.widths) - ids.shape[1]))
        lengths = (ids > 0).sum(dim=1, keepdim=True)  # (B, 1)
        x = self.embed(ids).transpose(1, 2)  # (B, C, T)
        pooled = []
        for conv, width in zip(self.convs, self.cfg.widths, strict=True):
            y = conv(x).relu()  # (B, F, T - width + 1)
            # Windows that reach into the padding are zeroed, so a message's score never
            # depends on how much padding its batch-mates forced on it.
            starts = torch.arange(y.shape[2], device=ids.device)[None, :]  # (1, T - width + 1)
            y = y * (starts + width <= lengths)[:, None, :]
            pooled.append(y.amax(dim=2))  # (B, F)
        h = self.drop(torch.cat(pooled, dim=1))  # (B, F * len(widths))
        return self.out(h).squeeze(1)  # (B,)


class _InferenceCNN:
    """What `FusedCNN` and `TableCNN` share: a trained TextCNN's filters in ascending-width order,
    scoring each message on its own tokens (no padding, so no work goes to it or to masking it),
    and the end of the network. Each computes every width's filters at every start in its own
    way (`_peaks`)."""

    def __init__(self, cnn: TextCNN) -> None:
        cfg = self.cfg = cnn.cfg
        order = sorted(range(len(cfg.widths)), key=lambda i: cfg.widths[i])  # ascending widths
        self.widths = [cfg.widths[i] for i in order]
        self.convs: list[nn.Conv1d] = [cnn.convs[i] for i in order]  # type: ignore[misc]
        with torch.no_grad():
            self.bias = torch.cat([c.bias for c in self.convs if c.bias is not None])  # (F · len(widths),)
            # The output layer's weights in ascending-width order, as the pooled features come.
            out = cnn.out.weight.view(len(cfg.widths), cfg.filters)
            self.out_weight = out[torch.tensor(order)].reshape(-1).clone()
            self.out_bias = cnn.out.bias.clone()

    @torch.inference_mode()
    def __call__(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Each message's token ids (only the first `window` are read) → logits (B,): what
        TextCNN.forward gives for the same ids right-padded with 0 into one tensor."""
        window = self.cfg.window
        return torch.cat([self._row(_int64(ids[:window]), min(len(ids), window)) for ids in batch])

    def _row(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        """One message's logit (1,) from its n token ids (n,): a tensor of its own, folded in place."""
        ids = ids.sub_(1).remainder_(self.cfg.buckets - 1).add_(1)  # fold_ids: a row has no padding
        # A width-w window is real only if it ends inside the message (starts 0 .. n - w); a width
        # with none pools to 0, which adds nothing to the logit. A filter's bias is the same at
        # every start and ReLU is monotone, so both come after the max: on F values per width,
        # not on every start.
        real = sum(1 for w in self.widths if w <= n)  # the widths with a window: a prefix
        if real == 0:
            return self.out_bias.clone()
        cols = real * self.cfg.filters
        pooled = (self._peaks(ids, n, real) + self.bias[:cols]).relu_()
        return (pooled @ self.out_weight[:cols] + self.out_bias).view(1)

    def _peaks(self, ids: torch.Tensor, n: int, real: int) -> torch.Tensor:
        """The max over starts of the first `real` widths' filters, without bias: (F · real,)."""
        raise NotImplementedError


class FusedCNN(_InferenceCNN):
    """A trained TextCNN's forward pass for inference, as matrix products by tap.

    A width-w filter at position t sums `W[:, :, k] · e[t + k]` over its taps k < w. Taking
    tap k of every filter wide enough to have one gives one (T, C) × (C, F·#widths>k) product
    per k, added at a shift of k positions: five GEMMs on the embeddings instead of four
    im2col convolutions, which copy each window. Equal to `TextCNN.forward` up to float
    rounding (tested), and cheaper on a CPU: `python -m bench.speed` times both.
    """

    def __init__(self, cnn: TextCNN) -> None:
        super().__init__(cnn)
        self.embed = cnn.embed
        with torch.no_grad():
            # Tap k exists for the widths w > k: a suffix of the ascending widths.
            self.taps: list[tuple[int, int, torch.Tensor]] = []  # (k, first filter column, (C, F·n))
            for k in range(self.widths[-1]):
                first = sum(1 for w in self.widths if w <= k)
                weight = torch.cat([c.weight[:, :, k].t() for c in self.convs[first:]], dim=1)
                self.taps.append((k, first * self.cfg.filters, weight.contiguous()))

    def _peaks(self, ids: torch.Tensor, n: int, real: int) -> torch.Tensor:
        widest, f = self.widths[-1], self.cfg.filters
        if n < widest:  # padded to the widest filter; windows that reach into it are left out below
            ids = nn.functional.pad(ids, (0, widest - n))
        t = ids.shape[0]
        x = self.embed(ids)  # (t, C)
        y = x @ self.taps[0][2]  # tap 0 of every width: (t, F · len(widths))
        for k, first, weight in self.taps[1:]:  # added by the GEMM itself, into a view of y
            y[: t - k, first:].addmm_(x[k:], weight)
        # Column block i of y is width i's filters at each start.
        return torch.cat([y[: n - w + 1, i * f : (i + 1) * f].amax(dim=0) for i, w in enumerate(self.widths[:real])])


class TableCNN(_InferenceCNN):
    """A trained TextCNN's forward pass for inference, from a table of every tap's products.

    A width-w filter at position t sums `W[:, :, k] · e[t + k]` over its taps k < w. The
    embeddings are a fixed table (tokens are hashed into its buckets), so each tap's product
    with every row of it can be computed once, when the model loads: one (buckets, C) × (C, F·Σw)
    product. Scoring a message is then only summing rows of that table, w rows for each window
    of width w, and a max over the windows' starts, with no matrix product: less than half
    `FusedCNN`'s time on the test messages (`python -m bench.speed`), for the table's memory,
    buckets × Σw × F floats: 528 MiB for the starter CNN (131,072 × 11 × 96), where its embedding
    takes 24 MiB. A bucket's rows for all its taps lie together (4 kB for the starter). Equal to
    `TextCNN.forward` up to float rounding (tested).

    All the sums of a message are one `embedding_bag` call, start by start: for each start t,
    one bag per width, of the rows of tokens t .. t + w - 1 for that width's taps. The index
    pattern (token position and tap of each row, where each bag begins) is the same for every
    message, so it is built once for the longest, and a message of n tokens takes its first n
    starts. A window that runs past the message's end reads an extra bucket whose rows are all
    -inf, so its sum is -inf and the max over starts never picks it, and one max over the
    (n, widths · F) sums pools every width at once.
    """

    def __init__(self, cnn: TextCNN) -> None:
        super().__init__(cnn)
        cfg = self.cfg
        self.taps = sum(self.widths)
        with torch.no_grad():
            # Column block g of a bucket's row is its embedding times tap g of all the taps
            # (widths ascending, each width's taps in order); then the -inf bucket.
            weight = torch.cat([c.weight[:, :, k].t() for c in self.convs for k in range(c.weight.shape[2])], dim=1)
            table = torch.empty(cfg.buckets + 1, self.taps * cfg.filters)
            torch.mm(cnn.embed.weight, weight, out=table[: cfg.buckets])
            table[cfg.buckets] = float("-inf")
        self.table = table.view(-1, cfg.filters)  # bucket x, tap g: row x · taps + g
        self.past_end = cfg.buckets * self.taps  # the -inf bucket's first row
        positions: list[int] = []
        taps: list[int] = []
        bags: list[int] = []
        firsts = [sum(self.widths[:i]) for i in range(len(self.widths))]
        for t in range(cfg.window):
            for w, first in zip(self.widths, firsts, strict=True):
                bags.append(len(positions))
                positions += range(t, t + w)
                taps += range(first, first + w)
        self.positions, self.tap_rows, self.bags = torch.tensor(positions), torch.tensor(taps), torch.tensor(bags)

    @staticmethod
    def size(cfg: CNNConfig) -> int:
        """The table's bytes for a CNN of this shape."""
        return (cfg.buckets + 1) * sum(cfg.widths) * cfg.filters * 4

    def _peaks(self, ids: torch.Tensor, n: int, real: int) -> torch.Tensor:
        # Each token's first row in the table, then the -inf bucket's for the positions past the end.
        rows = nn.functional.pad(ids.mul_(self.taps), (0, self.widths[-1] - 1), value=self.past_end)
        entries = n * self.taps
        index = rows[self.positions[:entries]].add_(self.tap_rows[:entries])
        # torch.embedding_bag is nn.functional.embedding_bag without its checks and argument
        # handling, which cost about as much as the sums (0: mode "sum").
        sums = torch.embedding_bag(self.table, index, self.bags[: n * len(self.widths)], False, 0)[0]
        return sums.view(n, -1).amax(dim=0)[: real * self.cfg.filters]


def _int64(ids: Sequence[int]) -> torch.Tensor:
    """A list of ints as a 1-D int64 tensor, through an array (faster than torch.tensor on a list)."""
    if not ids:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(array.array("q", ids), dtype=torch.int64)
