"""The registry of downstream tuning methods and how each one is set up with ``peft``.

=============  =======================================================  =========================
method         what is trained (the pretrained encoder stays frozen)    feature the guard reads
=============  =======================================================  =========================
p-tuning       P-tuning v1: virtual tokens from a prompt encoder (MLP)   [MASK] last hidden state
               prepended to a template with a [MASK]; the frozen MLM
               head reads [MASK] through a verbalizer (label words),
               or a linear head does when there is no MLM head
p-tuning-v2    prefix tuning: trainable keys/values on every layer      [CLS] last hidden state
               (peft PrefixTuningConfig); linear head on [CLS]
prompt-tuning  a soft prompt prepended to the input embeddings;         [CLS] last hidden state
               linear head on [CLS]
lora           LoRA r=8 on the attention query/value projections;       [CLS] last hidden state
               linear head on [CLS]
full           full fine-tuning (contrast: the encoder is NOT frozen)   [CLS] last hidden state
=============  =======================================================  =========================

Token-classification tasks put the linear head on every token and read every real token.

On a decoder LLM (LLaMA, Gemma 3: the table's ``kind="decoder"``) every method reads the **last real
token** instead of [CLS] / [MASK] (a causal model has no [CLS], and only the last position has seen
the whole input; it is what ``*ForSequenceClassification`` heads read), with a linear head: P-tuning
keeps its prompt encoder but has no template or verbalizer there. LoRA wraps ``q_proj``/``v_proj``.

Which method works on which architecture is the ``unsupported`` column of
:mod:`lmsanitator.core.architectures`, raised as one-line errors:

* ``p-tuning-v2`` needs attention layers that take ``past_key_values`` (the table's
  ``attention_prefix``: BERT- and RoBERTa-family models). ALBERT, DeBERTa, MPNet and XLNet
  attention ignore or reject them; a probe forward pass catches a silently ignored prefix on any
  architecture as well.
* ``lora`` needs ``nn.Linear`` query/value projections (the table's ``lora_targets``); XLNet stores
  them as raw parameter tensors.
* ``p-tuning`` does not do token classification (as in the LMSanitator paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmsanitator.core.architectures import Architecture, architecture
from lmsanitator.core.errors import LMSanitatorError


@dataclass(frozen=True)
class Method:
    """A downstream tuning method."""

    name: str
    description: str
    lr: float  # default learning rate on CPU-sized runs
    prefix_len: int | None  # default number of virtual tokens (None: not a prompt method)
    target: str  # feature read for sequence tasks: "cls" or "mask"
    peft_type: str | None  # "prefix", "prompt", "p-tuning", "lora" or None (full fine-tuning)
    token_tasks: bool = True

    @property
    def prepends_tokens(self) -> bool:
        """Virtual tokens take positions in front of the input (hidden states get an offset)."""
        return self.peft_type in ("prompt", "p-tuning")

    @property
    def frozen_encoder(self) -> bool:
        return self.peft_type is not None

    def target_on(self, arch: Architecture, kind: str) -> str:
        """The feature this method reads on ``arch`` for a ``kind`` task: every word's token for token
        tasks; the last token on a decoder; else the method's own (``cls`` or ``mask``)."""
        if kind == "token":
            return "tokens"
        return arch.sequence_target if arch.kind == "decoder" else self.target

    def check(self, model_type: str, kind: str) -> None:
        if kind == "token" and not self.token_tasks:
            raise LMSanitatorError(
                f"method '{self.name}' does not support token classification "
                "(use p-tuning-v2, prompt-tuning, lora or full)"
            )
        architecture(model_type).check_method(self.name)

    def peft_config(
        self,
        encoder,
        n_virtual: int,
        lora_r: int,
        lora_alpha: int,
        lora_dropout: float,
        encoder_hidden: int = 128,
    ):
        """The peft config for ``encoder`` (None for full fine-tuning)."""
        from peft import (  # noqa: PLC0415  heavy: peft imports transformers; keeps `lmsanitator --help` fast
            LoraConfig,
            PrefixTuningConfig,
            PromptEncoderConfig,
            PromptTuningConfig,
            TaskType,
        )

        ft = TaskType.FEATURE_EXTRACTION
        token_dim = int(encoder.model.get_input_embeddings().weight.shape[1])
        if self.peft_type == "prefix":
            return PrefixTuningConfig(task_type=ft, num_virtual_tokens=n_virtual, prefix_projection=False)
        if self.peft_type == "prompt":
            return PromptTuningConfig(
                task_type=ft, num_virtual_tokens=n_virtual, token_dim=token_dim, num_transformer_submodules=1
            )
        if self.peft_type == "p-tuning":
            return PromptEncoderConfig(
                task_type=ft,
                num_virtual_tokens=n_virtual,
                token_dim=token_dim,
                num_transformer_submodules=1,
                encoder_hidden_size=encoder_hidden,
                encoder_reparameterization_type="MLP",
            )
        if self.peft_type == "lora":
            # a list, as before the table, so adapter_config.json reads the same
            targets = list(architecture(encoder.model_type).lora_targets)
            return LoraConfig(
                task_type=ft,
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=targets,
                bias="none",
            )
        return None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry (later registrations replace earlier ones of the same name)."""
    METHODS[method.name] = method
    return method


register_method(
    Method(
        "p-tuning",
        "P-tuning v1: prompt-encoder virtual tokens + [MASK] template; verbalizer via the MLM head",
        lr=3e-3,
        prefix_len=8,
        target="mask",
        peft_type="p-tuning",
        token_tasks=False,
    )
)
register_method(
    Method(
        "p-tuning-v2",
        "P-tuning v2: prefix tuning on every layer, linear head on the [CLS] last hidden state",
        lr=5e-3,
        prefix_len=16,
        target="cls",
        peft_type="prefix",
    )
)
register_method(
    Method(
        "prompt-tuning",
        "prompt tuning: soft prompt prepended to the input, linear head on [CLS]",
        lr=2e-2,
        prefix_len=20,
        target="cls",
        peft_type="prompt",
    )
)
register_method(
    Method(
        "lora",
        "LoRA (r=8 on query/value), linear head on [CLS]",
        lr=1e-3,
        prefix_len=None,
        target="cls",
        peft_type="lora",
    )
)
register_method(
    Method(
        "full",
        "full fine-tuning of the encoder (contrast: nothing stays frozen)",
        lr=5e-5,
        prefix_len=None,
        target="cls",
        peft_type=None,
    )
)


# the built-in method names, as the option type of TuneConfig.method (the CLI's choices)
MethodName = Literal[tuple(METHODS)]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LMSanitatorError(f"unknown tuning method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name]
