"""Raw inputs to model batches: the task a tuned model keeps, tokenisation of texts, text pairs,
P-tuning templates and word lists, dynamic padding, position ids and the room a prefix leaves.

Items are padding-free dicts (``input_ids``, ``token_type_ids`` when the tokenizer gives them,
``labels`` when given; token tasks add ``word_index`` and ``first``); :func:`collate` pads a list
of them into one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from lmsanitator.core.architectures import PositionScheme
from lmsanitator.core.errors import LMSanitatorError

IGNORE = -100  # label of sub-tokens the token-task loss skips (cross_entropy's ignore_index)
DEFAULT_TEMPLATE = "{mask} : {text}"


@dataclass
class TaskInfo:
    """What a tuned model keeps of its task."""

    name: str
    kind: str
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    verbalizer: tuple[str, ...] | None = None
    pair: bool = False

    @classmethod
    def of(cls, task) -> TaskInfo:
        return cls(
            name=task.name,
            kind=task.kind,
            labels=tuple(task.labels),
            template=task.template,
            verbalizer=tuple(task.verbalizer) if task.verbalizer else None,
            pair=task.is_pair,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["verbalizer"] = list(self.verbalizer) if self.verbalizer else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskInfo:
        return cls(
            name=d["name"],
            kind=d["kind"],
            labels=tuple(d["labels"]),
            template=d.get("template", DEFAULT_TEMPLATE),
            verbalizer=tuple(d["verbalizer"]) if d.get("verbalizer") else None,
            pair=bool(d.get("pair")),
        )


def apply_template(template: str, text: str, mask_token: str) -> str:
    """P-tuning's input: the task template with its ``{mask}`` and ``{text}`` filled in."""
    return template.replace("{mask}", mask_token).replace("{text}", text)


def verbalizer_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The first sub-token of each label word (the MLM-head logits the verbalizer reads)."""
    ids = []
    for w in words:
        pieces = tokenizer.tokenize(" " + w) or tokenizer.tokenize(w)
        if not pieces:
            raise LMSanitatorError(f"label word '{w}' is empty after tokenization")
        ids.append(int(tokenizer.convert_tokens_to_ids(pieces[0])))
    if len(set(ids)) != len(ids):
        raise LMSanitatorError(
            f"label words {', '.join(words)} share a first sub-token; choose distinct words"
        )
    return ids


def encode_words(tokenizer, texts: Sequence, max_length: int, labels: Sequence | None = None) -> list[dict]:
    """Token tasks: word lists (or whitespace-split strings) into items with ``word_index`` (-1 on
    special tokens) and ``first`` (the first sub-token of a word, the one that is scored)."""
    words = [list(t) if not isinstance(t, str) else t.split() for t in texts]
    if any(not w for w in words):
        raise LMSanitatorError("token classification input with no tokens")
    try:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    except ValueError as exc:
        raise LMSanitatorError(f"tokenizer cannot take pre-split words: {exc}") from None
    items = []
    for i in range(len(words)):
        item = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
        word_index, first, prev = [], [], None
        for w in enc.word_ids(i):
            word_index.append(-1 if w is None else w)
            first.append(w is not None and w != prev)
            prev = w
        item["word_index"], item["first"] = word_index, first
        item["n_words"] = len(words[i])
        if labels is not None:
            y = labels[i]
            item["labels"] = [int(y[w]) if f else IGNORE for w, f in zip(word_index, first)]
        items.append(item)
    return items


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None,
    max_length: int,
    *,
    template: str | None = None,
    labels: Sequence | None = None,
) -> list[dict]:
    """Sequence tasks: texts (and text pairs) into items; with a P-tuning ``template`` the first
    field is the filled template, whose [MASK] must survive truncation."""
    first_field = (
        [apply_template(template, t, tokenizer.mask_token) for t in texts] if template else list(texts)
    )
    if pairs is not None and all(p is None for p in pairs):
        pairs = None
    if pairs is not None and any(p is None for p in pairs):
        raise LMSanitatorError("mixed inputs: some have a text_pair and some do not")
    enc = tokenizer(
        first_field, list(pairs) if pairs is not None else None, truncation=True, max_length=max_length
    )
    items = []
    for i in range(len(texts)):
        item = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
        if template and tokenizer.mask_token_id not in item["input_ids"]:
            raise LMSanitatorError(
                "the [MASK] of the P-tuning template was cut off by truncation; "
                "put {mask} before {text} in the task template"
            )
        if labels is not None:
            item["labels"] = int(labels[i])
        items.append(item)
    return items


def collate(
    items: list[dict], tokenizer, *, virtual_tokens: int, token_task: bool, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest (dynamic padding) on the tokenizer's padding side."""
    T = max(len(it["input_ids"]) for it in items)
    # left padding (XLNet) would put pads between prepended virtual tokens and the text and so
    # change relative distances; with virtual tokens, pad on the right (taps find [CLS] by id)
    left = getattr(tokenizer, "padding_side", "right") == "left" and not virtual_tokens

    def pad(seq, value):
        extra = [value] * (T - len(seq))
        return extra + list(seq) if left else list(seq) + extra

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {
        "input_ids": torch.tensor([pad(it["input_ids"], pad_id) for it in items]),
        "attention_mask": torch.tensor([pad([1] * len(it["input_ids"]), 0) for it in items]),
    }
    if "token_type_ids" in items[0]:
        type_pad = getattr(tokenizer, "pad_token_type_id", 0)
        batch["token_type_ids"] = torch.tensor([pad(it["token_type_ids"], type_pad) for it in items])
    if "word_index" in items[0]:
        batch["word_index"] = torch.tensor([pad(it["word_index"], -1) for it in items])
        batch["first"] = torch.tensor([pad(it["first"], False) for it in items])
    if "labels" in items[0]:
        if token_task:
            batch["labels"] = torch.tensor([pad(it["labels"], IGNORE) for it in items])
        else:
            batch["labels"] = torch.tensor([it["labels"] for it in items])
    return {k: v.to(device) for k, v in batch.items()}


def position_ids(ids: torch.Tensor, scheme: PositionScheme, pad_id: int | None) -> torch.Tensor:
    """Position ids the model would use without a prefix (a key/value cache would shift them)."""
    if scheme == "padding_offset":  # RoBERTa family: real tokens count from pad_id + 1
        m = (ids != pad_id).long()
        return torch.cumsum(m, dim=1) * m + int(pad_id)
    return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)


def max_length_room(
    want: int, tokenizer, scheme: PositionScheme, max_positions: int | None, n_prefix: int
) -> int:
    """Tokens per input: ``want``, capped by the tokenizer's limit and, with absolute position
    embeddings, by the positions the ``n_prefix`` virtual tokens leave."""
    limit = getattr(tokenizer, "model_max_length", want) or want
    want = min(want, int(limit) if limit < 1e6 else want)  # "no limit" is a huge number
    if scheme == "relative":  # relative attention: no position table to run out of
        return int(want)
    max_pos = int(max_positions or 512)
    if scheme == "padding_offset":
        max_pos -= 2  # positions start after the padding index
    room = max_pos - n_prefix
    if room < 8:
        raise LMSanitatorError(
            f"prefix length {n_prefix} leaves no room for the input (the model has {max_pos} positions)"
        )
    return int(min(want, room))
