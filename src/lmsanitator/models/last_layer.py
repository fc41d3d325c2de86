"""The fast last layer behind :meth:`Encoder.target_features`: run it for the read row only.

A ``cls`` or ``mask`` target reads one position per row, so on a BERT-style post-LN encoder the last
layer's keys and values still need every token, but its query, attention output and feed-forward
block (5/6 of the layer's matmuls) only the target row. Same numbers as the full pass up to float
rounding (``tests/test_models.py``); on 6-layer MiniLM it removes 14% of a fuzz step's arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmsanitator.models.taps import target_positions


class _InputCaptured(Exception):
    """Raised by a pre-hook to stop a forward pass once the last layer's input is known."""


def find_bert_style_last_layer(backbone: nn.Module, config, bert_style_layer: bool) -> nn.Module | None:
    """The backbone's last layer when it is a BERT-style post-LN block whose output is the last
    hidden state (checked by structure, not by name), else None.

    ``bert_style_layer`` is the architecture table's word that this model type uses BERT's layer;
    the structural checks guard against configs (relative positions, chunked feed-forward, decoders)
    whose layer computes something else.
    """
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not (
        bert_style_layer
        and not getattr(config, "is_decoder", False)
        and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
        and getattr(config, "chunk_size_feed_forward", 0) == 0
        and layers is not None
        and len(layers)
    ):
        return None
    last = layers[-1]
    sa = getattr(getattr(last, "attention", None), "self", None)
    if (
        sa is not None
        and all(hasattr(sa, k) for k in ("query", "key", "value", "attention_head_size", "scaling"))
        and hasattr(last.attention, "output")
        and hasattr(last, "feed_forward_chunk")
    ):
        return last
    return None


def last_layer_target_rows(encoder, last: nn.Module, batch, target: str, inputs_embeds=None):
    """``encoder.tap(encoder.forward(batch), batch, target)`` for a one-row target, with ``last`` (from
    :func:`find_bert_style_last_layer`) run for the read row only: ``(rows x width, example index)``."""
    captured = {}

    def stop(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _InputCaptured

    handle = last.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        encoder.forward(batch, inputs_embeds=inputs_embeds)
    except _InputCaptured:
        pass
    finally:
        handle.remove()
    h = captured["h"]  # input of the last layer, batch x seq x width
    pos = target_positions(
        batch["input_ids"], batch["attention_mask"], target, encoder.tokenizer, cls_last=encoder.cls_last
    )
    ar = torch.arange(h.shape[0], device=h.device)
    rows = h[ar, pos].unsqueeze(1)  # batch x 1 x width
    sa = last.attention.self
    heads = lambda x: x.view(x.shape[0], x.shape[1], -1, sa.attention_head_size).transpose(1, 2)  # noqa: E731
    keep = batch["attention_mask"].bool()[:, None, None, :]
    ctx = F.scaled_dot_product_attention(
        heads(sa.query(rows)), heads(sa.key(h)), heads(sa.value(h)), attn_mask=keep, scale=sa.scaling
    )
    ctx = ctx.transpose(1, 2).reshape(rows.shape)
    out = last.feed_forward_chunk(last.attention.output(ctx, rows))
    return out[:, 0], ar
