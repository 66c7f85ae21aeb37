"""Shared text tools for workloads that train their own small models: a word-level tokenizer.

:class:`WordTokenizer` splits lower-cased text into words, punctuation marks and single digits.
A number's first digit is a plain digit token and every further digit is a continuation token
(``##d``, as WordPiece does), so ``"8 8"`` and ``"88"`` stay distinct while every token is one
digit: ``"8*2=16"`` -> ``8 * 2 = 1 ##6``. The vocabulary is fixed by the word list given to the
constructor, so the same words always give the same ids (no training, no files, no download).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
DIGITS = [str(d) for d in range(10)]
CONTINUATION = [f"##{d}" for d in range(10)]
_CONTINUATION_SET = frozenset(CONTINUATION)
_PIECES = re.compile(r"####|\d+|[a-z]+(?:'[a-z]+)?|[^\sa-z\d]")


def split_words(text: str) -> list[str]:
    """Tokens of ``text`` before the vocabulary lookup (numbers as digit + continuation digits)."""
    out: list[str] = []
    for piece in _PIECES.findall(text.lower()):
        if piece[0].isdigit():
            out.append(piece[0])
            out.extend("##" + d for d in piece[1:])
        else:
            out.append(piece)
    return out


class WordTokenizer:
    """Word-level tokenizer with ids ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 (T5's convention).

    Parameters
    ----------
    texts
        Texts whose words make the vocabulary (digits and continuation digits are always in it).
    """

    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, texts: Iterable[str]):
        words = {w for t in texts for w in split_words(t)} - set(DIGITS) - set(CONTINUATION)
        self.vocab: list[str] = [PAD, EOS, UNK, *DIGITS, *CONTINUATION, *sorted(words)]
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Ids of ``text`` followed by ``</s>``, truncated to ``max_len`` (keeping ``</s>``)."""
        ids = [self.ids.get(w, self.unk_id) for w in split_words(text)]
        if max_len is not None:
            ids = ids[: max_len - 1]
        return [*ids, self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first ``</s>``; pads are skipped, continuation digits re-joined."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.pad_id:
                continue
            tok = self.vocab[i] if 0 <= i < len(self.vocab) else UNK
            if tok in _CONTINUATION_SET and out:
                out[-1] += tok[2:]
            else:
                out.append(tok)
        return " ".join(out)

    def batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, mask)``, both (B, L) with L the longest encoding (at most ``max_len``), right-padded."""
        encoded = [self.encode(t, max_len) for t in texts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e)
        return ids, (ids != self.pad_id).long()
