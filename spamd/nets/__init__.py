"""The neural networks: nn.Modules, their config dataclasses, and their inference forms (FusedCNN;
FusedRNN in torch and OrtRNN in onnxruntime, which the scorer uses)."""

from __future__ import annotations

import torch


def fold_ids(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Map the tokenizer's hashed ids into a model's own table, keeping 0 as padding."""
    return torch.where(ids > 0, (ids - 1) % (buckets - 1) + 1, ids)
