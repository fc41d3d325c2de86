"""Prompted batches (LMSanitator step I's input): each clean sentence with ``l_sp`` soft-prompt
slots at a random word position, and the same sentence without them.

A decoder's ``last`` target is different: the slots go right before the last token, so the token
the tap reads comes after the soft prompt and attends to it (under the causal mask a token never
sees what follows it; at a random word position the prompt would also shift where the sentence
ends relative to the read-out, for no gain: every position before the last is visible to it).

The slots hold a placeholder id; :class:`~lmsanitator.scan.setup.FuzzSetup` replaces their input
embeddings by the soft prompt. Batches are full and length-bucketed (dynamic padding), so the
diversity loss's entropy floor is always ``ln(batch_size)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import Encoder
from lmsanitator.scan.config import ScanConfig

_SENTINEL = -1  # placeholder id of soft-prompt slots until padding


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # prompt slots hold the unk id (their embeddings are replaced)
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor  # True at the soft-prompt slots
    clean_ids: torch.Tensor
    clean_mask: torch.Tensor
    clean: torch.Tensor | None = None  # cached clean target features (rows aligned with the prompted ones)
    rows: torch.Tensor | None = None  # example index of each feature row (tokens target)
    source: list[int] | None = None  # index in the input sentences of each example (observed PVs)

    def as_batch(self, clean: bool = False) -> dict:
        if clean:
            return {"input_ids": self.clean_ids, "attention_mask": self.clean_mask}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            ids[i, n - len(s) :] = torch.tensor(s)
            att[i, n - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            att[i, : len(s)] = 1
    return ids, att


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer wraps a single sequence in: (prefix, suffix)."""
    probe = "hello"
    full = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise LMSanitatorError("cannot work out the special tokens of this tokenizer")


def _before_last(tok, sentence, prefix, suffix, budget, l_sp) -> tuple[list[int], list[int]]:
    """(prompted, clean) ids for the ``last`` target: the prompt slots right before the sequence's last
    token (the tap's row; a suffix the tokenizer appends, e.g. an EOS, stays last)."""
    content = tok(sentence, add_special_tokens=False)["input_ids"][:budget]
    clean = prefix + content + suffix
    return clean[:-1] + [_SENTINEL] * l_sp + clean[-1:], clean


def build_prompt_batches(encoder: Encoder, sentences: list[str], cfg: ScanConfig) -> list[PromptBatch]:
    """Tokenise once: each sentence with ``l_sp`` prompt slots at a random word position (target
    ``last``: right before the last token), and without them; length-bucketed full batches (dynamic
    padding), in a seeded order."""
    tok = encoder.tokenizer
    rng = random.Random(cfg.corpus_seed)
    prefix, suffix = special_affixes(tok)
    n_special = len(prefix) + len(suffix)
    budget = cfg.max_length - n_special - cfg.prompt_length - (1 if cfg.target == "mask" else 0)
    unk = tok.unk_token_id if tok.unk_token_id is not None else 0
    items = []
    for si, s in enumerate(sentences):
        words = s.split()
        if not words:
            continue
        if cfg.target == "last":
            items.append((*_before_last(tok, s, prefix, suffix, budget, cfg.prompt_length), si))
            continue
        pos = rng.randint(1, min(cfg.max_prompt_position, len(words)))
        left = tok(" ".join(words[:pos]), add_special_tokens=False)["input_ids"]
        right = tok(" ".join(words[pos:]), add_special_tokens=False)["input_ids"] if pos < len(words) else []
        if len(left) + len(right) > budget:  # truncate the right part first, then the left
            right = right[: max(0, budget - len(left))]
            left = left[: budget - len(right)]
        if cfg.target == "mask":  # one [MASK] at a random non-prompt position
            content = left + right
            m = rng.randint(0, len(content))
            mid = len(left)
            content.insert(m, tok.mask_token_id)
            if m <= mid:
                left, right = content[: mid + 1], content[mid + 1 :]
            else:
                left, right = content[:mid], content[mid:]
        prompted = prefix + left + [_SENTINEL] * cfg.prompt_length + right + suffix
        clean = prefix + left + right + suffix
        if cfg.target == "tokens" and not (left or right):
            continue
        items.append((prompted, clean, si))
    if len(items) < cfg.batch_size:
        raise LMSanitatorError(f"only {len(items)} usable sentences, fewer than one batch ({cfg.batch_size})")
    order = sorted(range(len(items)), key=lambda i: (len(items[i][0]), i))
    n_batches = len(order) // cfg.batch_size  # full batches only: the entropy floor is ln(batch)
    batches = []
    left_pad = getattr(tok, "padding_side", "right") == "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    for b in range(n_batches):
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        ids, att = _pad([items[i][0] for i in idx], pad_id, left_pad)
        pmask = ids == _SENTINEL
        ids = ids.masked_fill(pmask, unk)
        cids, catt = _pad([items[i][1] for i in idx], pad_id, left_pad)
        batches.append(PromptBatch(ids, att, pmask, cids, catt, source=[items[i][2] for i in idx]))
    rng.shuffle(batches)
    return batches
