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


class PromptText:
    """A prompt template around the image tokens, as LLaVA lays it out: the template's text
    before `<image>` and after it (with `{instruction}` filled in) are tokenized each on its
    own, and the image tokens go between them. Tokens come from a BPE tokenizer's
    tokenizer.json (`tokenizers`, e.g. Pythia's) or, without one, the bytes above."""

    def __init__(self, template: str, tokenizer_json: str | None = None) -> None:
        self.before, self.after = template.split("<image>", 1)
        self.tokenizer_json = tokenizer_json
        self._tok = None
        if tokenizer_json is not None:
            from tokenizers import Tokenizer
            try:
                self._tok = Tokenizer.from_str(tokenizer_json)
            except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
                raise ValueError(f"not a tokenizers tokenizer.json ({e})") from e
        self._cache: dict[str, tuple[list[int], list[int]]] = {}

    def _ids(self, text: str) -> list[int]:
        if self._tok is None:
            return list(text.encode("utf-8"))
        return self._tok.encode(text).ids

    def split(self, instruction: str) -> tuple[list[int], list[int]]:
        """(ids before the image tokens, ids after them) for one instruction."""
        if instruction not in self._cache:
            a = self._ids(self.before.replace("{instruction}", instruction))
            b = self._ids(self.after.replace("{instruction}", instruction))
            bos = self._ids("")[:1]          # a tokenizer that starts every text with BOS:
            if bos and a[:1] == bos and b[:1] == bos:       # only the prompt's first keeps it
                b = b[1:]
            self._cache[instruction] = (a, b)
        return self._cache[instruction]

    def __getstate__(self) -> dict:                  # deepcopy / pickle: rebuilt from JSON
        return {"before": self.before, "after": self.after, "json": self.tokenizer_json}

    def __setstate__(self, s: dict) -> None:
        self.__init__(s["before"] + "<image>" + s["after"], s["json"])
