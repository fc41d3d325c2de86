"""The trainable part of a tuned model: the peft adapter on the encoder copy (or, for full
fine-tuning, the encoder itself) and which of its parameters train."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from torch import nn

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import Encoder
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.methods import Method


def quiet_peft() -> None:
    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", message=".*[Tt]oken type ids.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    logging.getLogger("peft").setLevel(logging.ERROR)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (errors reach the user as one line)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def mlm_head_of(mlm_model: nn.Module) -> nn.Module | None:
    """The MLM head of a ``*ForMaskedLM`` model when it is one module beside the encoder."""
    prefix = getattr(mlm_model, "base_model_prefix", "")
    others = [m for name, m in mlm_model.named_children() if name != prefix]
    return others[0] if len(others) == 1 else None


def attach_adapter(
    method: Method,
    config: TuneConfig,
    base: nn.Module,
    encoder: Encoder,
    n_virtual: int,
    adapter_dir: str | Path | None = None,
) -> nn.Module:
    """``base`` wrapped in ``method``'s peft adapter (new, or read from ``adapter_dir``), with only
    the adapter trainable; full fine-tuning returns ``base`` itself, trainable."""
    if method.peft_type is None:
        for n, p in base.named_parameters():  # the pooler and XLNet's mask_emb never reach the output
            p.requires_grad_(not (n.startswith("pooler.") or n == "mask_emb"))
        return base
    for p in base.parameters():
        p.requires_grad_(False)
    try:
        backbone = _peft_model(method, config, base, encoder, n_virtual, adapter_dir)
    except LMSanitatorError:
        raise
    except Exception as exc:
        raise LMSanitatorError(
            f"cannot set up {method.name} on '{encoder.model_type}': {first_line(exc)}"
        ) from None
    # only the adapter trains (peft leaves e.g. XLNet's mask_emb trainable)
    for n, p in backbone.named_parameters():
        p.requires_grad_(adapter_dir is None and ("lora_" in n or n.startswith("prompt_encoder")))
    return backbone


def _peft_model(method: Method, config: TuneConfig, base, encoder, n_virtual: int, adapter_dir):
    from peft import (  # noqa: PLC0415  heavy: peft imports transformers; keeps `lmsanitator --help` fast
        PeftModel,
        get_peft_model,
    )

    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    c = config
    pcfg = method.peft_config(
        encoder,
        n_virtual or int(c.prefix_len or 0),
        c.lora_r,
        c.lora_alpha,
        c.lora_dropout,
        c.prompt_encoder_hidden,
    )
    return get_peft_model(base, pcfg)
