"""Where the guard looks first: each token's word, and how much each token's hidden state pulls the
output toward a PV (gradient saliency). Used by trigger removal (:mod:`lmsanitator.guard.purge`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.tuning import TunedModel


def word_positions(
    model: TunedModel, texts: Sequence, pairs: Sequence[str | None] | None = None
) -> list[list[tuple[int, int] | None]]:
    """For each input, ``(field, word)`` of every token of :meth:`TunedModel.encode`'s ``input_ids`` (words
    split on whitespace, field 0 the text, 1 the pair), ``None`` for special and template tokens.
    Needs a fast tokenizer (character offsets); token tasks use their word ids."""
    tok = model.tokenizer
    if model.task.kind == "token":
        return [[None if w < 0 else (0, w) for w in it["word_index"]] for it in model.encode(texts, pairs)]
    if not getattr(tok, "is_fast", False):
        raise LMSanitatorError("word positions need a fast tokenizer (character offsets)")
    first = [model.apply_template(t) for t in texts] if model.target == "mask" else list(texts)
    use_pairs = pairs is not None and not all(p is None for p in pairs)
    enc = tok(
        first,
        list(pairs) if use_pairs else None,
        truncation=True,
        max_length=model.max_length,
        return_offsets_mapping=True,
    )

    def spans(text: str, start: int) -> list[tuple[int, int]]:
        out, pos = [], start
        for w in text.split():
            a = text.index(w, pos - start) + start
            out.append((a, a + len(w)))
            pos = a + len(w)
        return out

    result = []
    for i in range(len(texts)):
        text_at = first[i].find(texts[i]) if model.target == "mask" else 0
        fields = [spans(texts[i], max(text_at, 0))]
        if use_pairs:
            fields.append(spans(pairs[i], 0))
        seq = enc.sequence_ids(i)
        row = []
        for (a, b), f in zip(enc["offset_mapping"][i], seq):
            hit = None
            if f is not None and b > a and f < len(fields):
                for w, (ws, we) in enumerate(fields[f]):
                    if ws <= a < we:
                        hit = (f, w)
                        break
            row.append(hit)
        result.append(row)
    return result


def layer_stack(model: TunedModel) -> nn.ModuleList | None:
    """The encoder's list of transformer layers (None when it cannot be found, e.g. ALBERT's
    shared layer)."""
    base = model.base_model()
    n = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", None)
    for mod in base.modules():
        if isinstance(mod, nn.ModuleList) and n and len(mod) == n:
            return mod
    return None


def token_gradient_norms(
    model: TunedModel,
    texts: Sequence,
    pairs: Sequence[str | None] | None,
    objective,
    depth: int | None = None,
) -> torch.Tensor:
    """``|d objective / d h_t|`` for every input token's hidden state ``h_t`` at the input of the
    last ``depth`` transformer layers (default: a third of them, at least one; the token
    embeddings when the layers cannot be found or ``depth`` covers them all), inputs x tokens,
    aligned with :meth:`TunedModel.encode` before padding. ``objective`` maps ``(features, rows)`` to a
    scalar. One forward pass, and a backward pass through those layers only; no parameter
    gradient is kept. Not thread-safe: a hook sits on the model while it runs (the service
    serialises predictions)."""
    layers = layer_stack(model)
    n_layers = len(layers) if layers is not None else 0
    depth = max(1, -(-n_layers // 3)) if depth is None else depth
    at = n_layers - depth - 1  # the layer whose output feeds the last `depth` layers
    module = layers[at] if layers is not None and at >= 0 else model.base_model().get_input_embeddings()
    seen: list[torch.Tensor] = []

    def cut(_module, _inputs, out):  # the backward pass stops here
        h = out[0] if isinstance(out, tuple) else out
        h = h.detach().requires_grad_(True)
        seen.append(h)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    was = model.training
    model.eval()
    handle = module.register_forward_hook(cut)
    try:
        with torch.enable_grad():
            items = model.encode(texts, pairs)
            batch = model.collate(items)
            _, feats, rows, _ = model(batch)
            (grad,) = torch.autograd.grad(objective(feats, rows), [seen[-1]])
    finally:
        handle.remove()
        model.train(was)
    norms = grad.norm(dim=-1).detach()
    if norms.shape[1] > batch["input_ids"].shape[1]:  # prepended virtual tokens (prompt tuning, P-tuning)
        norms = norms[:, norms.shape[1] - batch["input_ids"].shape[1] :]
    T = norms.shape[1]
    left = getattr(model.tokenizer, "padding_side", "right") == "left" and not model.n_virtual
    out = norms.new_zeros(len(items), max(len(it["input_ids"]) for it in items))
    for i, it in enumerate(items):  # undo the padding: row i = input i's own tokens
        n = len(it["input_ids"])
        out[i, :n] = norms[i, T - n :] if left else norms[i, :n]
    return out
