"""One row per ``model_type``: everything the project needs to know about an architecture.

Models, tuning, attacks and the scan read these rows instead of keeping their own string sets, so a
new architecture is added here once. A model type missing from the table is refused with a one-line
error naming the supported ones.

Decoder LLMs (``kind="decoder"``: LLaMA, Gemma 3) have no [CLS]: their sequence feature is the
*last* real token, the one a ``*ForSequenceClassification`` head reads (:attr:`Architecture.sequence_target`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmsanitator.core.errors import LMSanitatorError

Kind = Literal["encoder", "decoder"]
# how position ids are built: from 0 (absolute), from the padding index (RoBERTa family: the
# first real token sits at pad_id + 1), or not at all (relative attention: XLNet, DeBERTa)
PositionScheme = Literal["absolute", "padding_offset", "relative"]

_NO_PREFIX = (
    "its attention layers in transformers 5.x do not take a key/value prefix (past_key_values); "
    "use prompt-tuning, p-tuning or lora"
)


@dataclass(frozen=True)
class Architecture:
    """What one ``model_type`` looks like to LMSanitator."""

    model_type: str
    kind: Kind = "encoder"
    token_types: bool = True  # the forward pass takes token_type_ids
    cls_last: bool = False  # [CLS] sits at the end of the sequence (XLNet), not the front
    positions: PositionScheme = "absolute"
    # the paper's BERT hyper-parameters apply (T_L = 0.2, POR utility weight 0.5)
    bert_like: bool = False
    # its layers are BERT's post-LN layer (BertLayer and its copies): the scan's fast last layer
    bert_style_layer: bool = False
    lora_targets: tuple[str, ...] = ("query", "value")
    attention_prefix: bool = False  # attention takes a key/value prefix (P-tuning v2)
    # tuning method -> why it cannot work on this architecture
    unsupported: dict[str, str] = field(default_factory=dict)

    @property
    def sequence_target(self) -> str:
        """The tap a sequence-level feature is read at: ``cls`` on encoders, ``last`` (the last real
        token: a causal decoder's only position that has seen the whole input) on decoders."""
        return "last" if self.kind == "decoder" else "cls"

    def check_method(self, method: str) -> None:
        if method in self.unsupported:
            raise LMSanitatorError(
                f"method '{method}' does not work on '{self.model_type}' models: {self.unsupported[method]}"
            )


def _row(model_type: str, **kw) -> Architecture:
    unsupported = dict(kw.pop("unsupported", {}))
    if not kw.get("attention_prefix", False):
        unsupported.setdefault("p-tuning-v2", _NO_PREFIX)
    return Architecture(model_type, unsupported=unsupported, **kw)


_BERT = dict(bert_like=True, bert_style_layer=True, attention_prefix=True)
_ROBERTA = dict(token_types=False, positions="padding_offset", bert_style_layer=True, attention_prefix=True)
# rotary positions are applied inside attention, so position ids simply count from 0; peft's prefix
# (a DynamicCache of keys/values) changes the output of LlamaModel and Gemma3TextModel on
# transformers 5.x and trains (tests/test_decoders.py checks both)
_DECODER = dict(kind="decoder", token_types=False, lora_targets=("q_proj", "v_proj"), attention_prefix=True)

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        _row("bert", **_BERT),
        _row("ernie", bert_like=True, attention_prefix=True),
        _row("megatron-bert", bert_like=True, attention_prefix=True),
        _row("nezha", bert_like=True, attention_prefix=True),
        _row("electra", **_BERT),
        _row("distilbert", token_types=False, bert_like=True, lora_targets=("q_lin", "v_lin")),
        _row("roberta", **_ROBERTA),
        _row("xlm-roberta", **_ROBERTA),
        _row("camembert", **_ROBERTA),
        _row("roformer", attention_prefix=True),
        _row("albert"),
        _row("deberta", positions="relative", lora_targets=("in_proj",)),
        _row("deberta-v2", positions="relative", lora_targets=("query_proj", "value_proj")),
        _row("mpnet", token_types=False, positions="padding_offset", lora_targets=("q", "v")),
        _row("modernbert", token_types=False, lora_targets=("Wqkv",)),
        _row("llama", **_DECODER),
        _row("gemma3_text", **_DECODER),  # Gemma3ForCausalLM (text only: gemma-3-270m)
        _row(
            "xlnet",
            cls_last=True,
            positions="relative",
            unsupported={
                "lora": "XLNet keeps its query/value projections as raw parameter tensors, not nn.Linear "
                "modules, so LoRA cannot wrap them; use prompt-tuning, p-tuning or full"
            },
        ),
    )
}

ENCODER_TYPES = frozenset(t for t, a in ARCHITECTURES.items() if a.kind == "encoder")
DECODER_TYPES = frozenset(t for t, a in ARCHITECTURES.items() if a.kind == "decoder")


def architecture(model_type: str) -> Architecture:
    """The row of ``model_type``; a one-line error when the project does not know it."""
    if model_type not in ARCHITECTURES:
        raise LMSanitatorError(
            f"unsupported model type '{model_type}': supported are {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]
