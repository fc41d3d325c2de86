"""Feature taps: the rows of an encoder's last hidden state that a backdoor's *target* controls.

* ``cls``    - the [CLS] position (the first position for BERT-style models, the last for XLNet);
* ``mask``   - the [MASK] position (P-tuning v1, BToP);
* ``tokens`` - every non-special token (token classification, POR-NER);
* ``last``   - the last real (attended) token: a decoder LLM's sequence feature, what
  ``*ForSequenceClassification`` heads of LLaMA-style models read (found from the attention mask, so
  left and right padding alike).

``TARGETS`` are the outputs a scan mines and a PV file names (``last`` on decoders); ``TAPS``, the
outputs the models, tuning and attacks read, are the same four (kept as a name of its own for them).
"""

from __future__ import annotations

import torch

from lmsanitator.core.errors import LMSanitatorError

TARGETS = ("cls", "mask", "tokens", "last")
TAPS = TARGETS


def special_ids(tokenizer) -> list[int]:
    """The ids of the tokenizer's special tokens ([CLS], [SEP], [PAD], [MASK], ...), sorted."""
    return sorted({int(i) for i in tokenizer.all_special_ids if i is not None})


def tap(hidden, input_ids, attention_mask, target, tokenizer, *, cls_last=False, exclude=None):
    """Rows of ``hidden`` (batch x seq x width) that a target reads, and their example index.

    ``cls``: the first [CLS] of each row (so a prompt prepended before it is skipped); the first
    (or, for XLNet-style models, last attended) position when there is none.
    ``mask``: the first [MASK] of each row; a row without one is an error.
    ``tokens``: every attended non-special token (``exclude`` masks further positions out, e.g.
    soft-prompt placeholders).
    ``last``: the last attended position of each row.
    """
    if target in ("cls", "mask", "last"):
        pos = target_positions(input_ids, attention_mask, target, tokenizer, cls_last=cls_last)
        ar = torch.arange(input_ids.shape[0], device=input_ids.device)
        return hidden[ar, pos], ar
    if target == "tokens":
        keep = attention_mask.bool()
        for sid in special_ids(tokenizer):
            keep &= input_ids != sid
        if exclude is not None:
            keep &= ~exclude.bool()
        rows, cols = keep.nonzero(as_tuple=True)
        return hidden[rows, cols], rows
    raise LMSanitatorError(f"unknown target '{target}': choose one of {', '.join(TAPS)}")


def target_positions(input_ids, attention_mask, target, tokenizer, *, cls_last=False) -> torch.Tensor:
    """The one position per row a ``cls``, ``mask`` or ``last`` target reads (see :func:`tap`)."""
    bsz, seq = input_ids.shape
    if target == "last":
        return (attention_mask * torch.arange(seq, device=input_ids.device)).argmax(dim=1)
    if target == "cls":
        cls_id = getattr(tokenizer, "cls_token_id", None)
        if cls_last:
            # left padding puts the last real token at the end; [CLS] is the last attended position
            pos = (attention_mask * torch.arange(seq, device=input_ids.device)).argmax(dim=1)
        else:
            pos = torch.zeros(bsz, dtype=torch.long, device=input_ids.device)
        if cls_id is not None:
            is_cls = input_ids == cls_id
            has = is_cls.any(dim=1)
            first = (
                is_cls.float().argmax(dim=1)
                if not cls_last
                else (is_cls * torch.arange(seq, device=input_ids.device)).argmax(dim=1)
            )
            pos = torch.where(has, first, pos)
        return pos
    if target == "mask":
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise LMSanitatorError("target 'mask' needs a tokenizer with a mask token")
        is_mask = input_ids == mask_id
        has = is_mask.any(dim=1)
        if not bool(has.all()):
            missing = int((~has).sum())
            raise LMSanitatorError(f"target 'mask': {missing} input(s) have no {tokenizer.mask_token}")
        return is_mask.float().argmax(dim=1)
    raise LMSanitatorError(f"target '{target}' reads more than one position per row")
