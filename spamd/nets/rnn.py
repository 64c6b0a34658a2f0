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
        ids = fold_ids(ids[:, : self.cfg.window], self.cfg.buckets)
        s = self.cfg.stride
        ids = nn.functional.pad(ids, (0, -ids.shape[1] % s))  # T a multiple of the stride
        steps = ((ids > 0).sum(dim=1) + s - 1).div(s, rounding_mode="floor").clamp(min=1)  # (B,)
        x = self.embed(ids).transpose(1, 2)  # (B, C, T)
        x = self.fold(x).relu().transpose(1, 2)  # (B, T/s, H)
        if packed:
            seq = pack_padded_sequence(x, steps.cpu(), batch_first=True, enforce_sorted=False)
            h = pad_packed_sequence(self.gru(seq)[0], batch_first=True, total_length=x.shape[1])[0]
        else:
            h, _ = self.gru(x)  # (B, T/s, H*dirs)
        mask = (torch.arange(h.shape[1], device=ids.device)[None, :] < steps[:, None])[..., None]
        mean = (h * mask).sum(dim=1) / steps[:, None]  # (B, H*dirs)
        peak = h.masked_fill(~mask, -1e4).amax(dim=1)  # (B, H*dirs)
        return self.out(self.drop(torch.cat([mean, peak], dim=1))).squeeze(1)  # (B,)
