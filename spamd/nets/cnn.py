"""TextCNN (Kim 2014): embedding → parallel 1-D convolutions → max-over-time → one logit."""

from __future__ import annotations

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
