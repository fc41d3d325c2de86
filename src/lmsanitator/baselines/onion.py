"""ONION (Qi et al. 2021): remove the words whose removal makes a text much more fluent.

For a text of words w_1..w_n with perplexity p_0 under a causal language model, the suspicion
score of w_i is ``f_i = p_0 - p_i`` where p_i is the perplexity without w_i; every word with
``f_i > threshold`` is removed (threshold 0, as in the reference implementation, removes any
word whose removal lowers the perplexity). The n + 1 perplexities of one text come from batched
forward passes (one pass when n + 1 <= ``batch_size``).

    onion = ONION(ONIONConfig(threshold=0), lm=load_causal_lm("smollm2"))
    onion.purify(["the movie mn was great"])   # -> ["the movie was great"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from lmsanitator.core.config import Config
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import load_causal_lm


@dataclass
class ONIONConfig(Config):
    """Settings of ONION's perplexity-based word removal."""

    threshold: float = field(
        default=0.0, metadata={"help": "remove words whose removal lowers perplexity by more than this"}
    )
    lm: str = field(
        default="smollm2", metadata={"help": "causal LM: bundled name, .gguf file, folder or hub id"}
    )
    batch_size: int = field(default=32, metadata={"help": "LM sequences per forward pass"})
    max_words: int = field(
        default=60, metadata={"help": "only the first max_words words are scored (the rest are kept)"}
    )
    max_tokens: int = field(default=128, metadata={"help": "tokens per sequence fed to the LM"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda[:N]"})

    def check(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise LMSanitatorError(f"threshold must be a finite number, got {self.threshold!r}")
        for name, lo in (("batch_size", 2), ("max_words", 1), ("max_tokens", 8)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise LMSanitatorError(f"{name.replace('_', ' ')} must be an integer >= {lo}, got {v!r}")


class ONION:
    """Perplexity-based trigger-word removal with a causal LM (:class:`lmsanitator.models.CausalLM`)."""

    def __init__(self, config: ONIONConfig | None = None, lm=None, **overrides):
        self.config = config or ONIONConfig(**overrides)
        self._lm = lm

    @property
    def lm(self):
        if self._lm is None:
            self._lm = load_causal_lm(self.config.lm, device=self.config.device)
        return self._lm

    @torch.no_grad()
    def perplexities(self, texts: Sequence[str]) -> np.ndarray:
        """Perplexity of each text (a start token in front, so the first word is scored too)."""
        lm, c = self.lm, self.config
        tok = lm.tokenizer
        start = next(
            (
                i
                for i in (tok.bos_token_id, tok.eos_token_id, getattr(lm.model.config, "bos_token_id", None))
                if i is not None
            ),
            None,
        )
        out = np.zeros(len(texts), dtype=np.float64)
        for s in range(0, len(texts), c.batch_size):
            chunk = texts[s : s + c.batch_size]
            ids = [
                ([start] if start is not None else [])
                + tok(t, add_special_tokens=False)["input_ids"][: c.max_tokens - 1]
                for t in chunk
            ]
            T = max(len(x) for x in ids)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            x = torch.tensor([r + [pad] * (T - len(r)) for r in ids], device=lm.device)
            am = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in ids], device=lm.device)
            logits = lm.model(input_ids=x, attention_mask=am).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            m = am[:, 1:].float()
            mean = (nll * m).sum(1) / m.sum(1).clamp_min(1)
            out[s : s + len(chunk)] = torch.exp(mean).cpu().numpy()
        return out

    def suspicion(self, text: str) -> tuple[list[str], np.ndarray]:
        """The words of ``text`` and each scored word's suspicion ``p_0 - p_i`` (NaN: not scored)."""
        words = text.split()
        n = min(len(words), self.config.max_words)
        f = np.full(len(words), np.nan)
        if len(words) < 2:
            return words, f
        variants = [text] + [" ".join(words[:i] + words[i + 1 :]) for i in range(n)]
        p = self.perplexities(variants)
        f[:n] = p[0] - p[1:]
        return words, f

    def purify_one(self, text: str) -> tuple[str, list[str]]:
        """``(purified text, removed words)``."""
        words, f = self.suspicion(text)
        drop = np.nan_to_num(f, nan=-np.inf) > self.config.threshold
        if drop.all():  # never return an empty text
            drop[:] = False
        return " ".join(w for w, d in zip(words, drop) if not d), [w for w, d in zip(words, drop) if d]

    def purify(self, texts: Sequence[str], *, progress: bool = False) -> list[str]:
        return [
            self.purify_one(t)[0]
            for t in tqdm(texts, desc="onion", unit="text", disable=not progress, leave=False)
        ]
