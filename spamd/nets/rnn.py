"""Bidirectional GRU over a long token window, pooled over time → one logit.

A GRU steps one position at a time, so on a CPU its cost is the number of steps. A
strided convolution first folds every `stride` tokens into one step (2,000 tokens → 500
steps); the GRU then reads the whole window with one set of shared weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from spamd.nets import fold_ids


@dataclass(frozen=True)
class RNNConfig:
    buckets: int = 1 << 16
    embed_dim: int = 32
    stride: int = 4  # tokens folded into one GRU step
    hidden: int = 48
    bidirectional: bool = True
    dropout: float = 0.2
    window: int = 2000  # the RNN reads up to `window` tokens: much further than the CNN


class TextRNN(nn.Module):
    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.buckets, cfg.embed_dim, padding_idx=0)
        self.fold = nn.Conv1d(cfg.embed_dim, cfg.hidden, cfg.stride, stride=cfg.stride)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, batch_first=True, bidirectional=cfg.bidirectional)
        dirs = 2 if cfg.bidirectional else 1
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(2 * dirs * cfg.hidden, 1)

    def forward(self, ids: torch.Tensor, packed: bool = False) -> torch.Tensor:
        """ids (B, T) int64, right-padded with 0 → logits (B,).

        `packed`: each message is read to its own end, so its logit does not depend on its
        batch-mates' lengths, as scoring needs. Training leaves it off: on a CPU a packed GRU
        trains several times slower, and the backward direction then reads a batch's padding
        first (training batches messages of similar length)."""
        x, steps = self.steps(ids)
        if packed:
            h = run_packed(self.gru, x, steps)
        else:
            h, _ = self.gru(x)  # (B, T/s, H*dirs)
        return self.pool(h, steps)

    def steps(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) → the GRU's input (B, T/s, H) and each message's number of steps (B,)."""
        ids = fold_ids(ids[:, : self.cfg.window], self.cfg.buckets)
        s = self.cfg.stride
        ids = nn.functional.pad(ids, (0, -ids.shape[1] % s))  # T a multiple of the stride
        steps = ((ids > 0).sum(dim=1) + s - 1).div(s, rounding_mode="floor").clamp(min=1)  # (B,)
        x = self.embed(ids).transpose(1, 2)  # (B, C, T)
        return self.fold(x).relu().transpose(1, 2), steps  # (B, T/s, H)

    def pool(self, h: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The GRU's outputs (B, T/s, H*dirs) → logits (B,): mean and max over each message's steps."""
        mask = (torch.arange(h.shape[1], device=h.device)[None, :] < steps[:, None])[..., None]
        mean = (h * mask).sum(dim=1) / steps[:, None]  # (B, H*dirs)
        peak = h.masked_fill(~mask, -1e4).amax(dim=1)  # (B, H*dirs)
        return self.out(self.drop(torch.cat([mean, peak], dim=1))).squeeze(1)  # (B,)


def run_packed(gru: nn.GRU, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """`gru` over x (B, T, ·), each row read for its own number of steps; outputs past a row's
    end are 0, as nn.GRU gives for padding."""
    seq = pack_padded_sequence(x, steps.cpu(), batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(gru(seq)[0], batch_first=True, total_length=x.shape[1])[0]


class FusedRNN:
    """A trained TextRNN's packed forward pass for inference, both directions in one GRU.

    nn.GRU runs a bidirectional layer's two directions one after the other, and on a CPU a
    GRU's cost is its number of steps (each step is a tiny product, mostly call overhead). Here
    both run as one GRU twice as wide: each gate's weights hold the forward direction's in one
    diagonal block and the backward direction's in the other (a GRU's gates act unit by unit,
    so the blocks never mix), and the second half of the input is each message read backwards
    from its own end. The pooling after the GRU (mean and max over a message's steps) does not
    depend on the order of the steps, so the backward half needs no turning back. Equal to
    `TextRNN.forward(packed=True)` up to float rounding (tested); `python -m bench.speed` times both.
    """

    def __init__(self, rnn: TextRNN) -> None:
        self.rnn = rnn
        g = rnn.gru
        if not g.bidirectional:  # one direction: nothing to fuse
            self.gru = g
            return
        h, n = g.hidden_size, g.input_size
        self.gru = nn.GRU(2 * n, 2 * h, batch_first=True)
        with torch.no_grad():
            for kind, width in (("ih", n), ("hh", h)):
                # Rows come as three gates (r, z, n) of h units each; fused, a gate's rows are
                # [forward units, backward units] and its columns [forward input, backward input].
                fwd = getattr(g, f"weight_{kind}_l0").view(3, h, width)
                bwd = getattr(g, f"weight_{kind}_l0_reverse").view(3, h, width)
                w = torch.zeros(3, 2 * h, 2 * width)
                w[:, :h, :width], w[:, h:, width:] = fwd, bwd
                getattr(self.gru, f"weight_{kind}_l0").copy_(w.view(6 * h, 2 * width))
                fwd_b = getattr(g, f"bias_{kind}_l0").view(3, h)
                bwd_b = getattr(g, f"bias_{kind}_l0_reverse").view(3, h)
                getattr(self.gru, f"bias_{kind}_l0").copy_(torch.cat([fwd_b, bwd_b], dim=1).view(-1))
        self.gru.eval()

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64, right-padded with 0 → logits (B,), as TextRNN.forward(packed=True)."""
        x, steps = self.rnn.steps(ids)
        if self.gru is not self.rnn.gru:  # fused: the second half of the input reads backwards
            pos = torch.arange(x.shape[1], device=x.device)[None, :]
            # Step i of the backward half reads step n-1-i of the message (n: its own steps).
            back = torch.where(pos < steps[:, None], steps[:, None] - 1 - pos, pos)
            x = torch.cat([x, torch.gather(x, 1, back[..., None].expand_as(x))], dim=2)
        return self.rnn.pool(run_packed(self.gru, x, steps), steps)
