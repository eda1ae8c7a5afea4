"""Offline byte-level tokenizer for instructions (no vocabulary files, no hub).

Ids 0..255 are UTF-8 bytes; 256 = PAD, 257 = BOS, 258 = EOS. Any text round-trips; long
instructions are truncated to `max_tokens` (BOS and EOS included).
"""
from __future__ import annotations

import torch

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259


def encode(texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (ids (B, L), attention mask (B, L)), right-padded to the longest text (<= max)."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (BOS + EOS), got {max_tokens}")
    rows = [[BOS] + list(t.encode("utf-8"))[: max_tokens - 2] + [EOS] for t in texts]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def decode(ids: torch.Tensor) -> str:
    """One row of ids back to text (special tokens dropped)."""
    return bytes(int(i) for i in ids.tolist() if i < 256).decode("utf-8", errors="replace")
