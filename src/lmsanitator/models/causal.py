"""Causal language models (perplexity for the ONION baseline), kept apart from the encoders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmsanitator.core.architectures import ENCODER_TYPES
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models.decoder import gguf_folder, is_gguf, prepare_tokenizer
from lmsanitator.models.registry import BUNDLED, first_line, quiet_transformers, resolve_model_path


@dataclass
class CausalLM:
    """A causal language model and its tokenizer (``pad_token`` set; inputs get a BOS in front)."""

    name: str
    model: nn.Module
    tokenizer: object

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_causal_lm(name_or_path: str = "smollm2", *, device: str = "cpu") -> CausalLM:
    """A causal LM by bundled name (``smollm2``, ``gemma3-270m``: GGUF files, dequantised once into
    the user's cache), a ``.gguf`` file, a local folder or a hub id (no remote code)."""
    quiet_transformers()
    from transformers import (  # noqa: PLC0415  heavy: transformers, only when a model is loaded
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    if name_or_path in BUNDLED and BUNDLED[name_or_path].kind != "decoder":
        raise LMSanitatorError(f"'{name_or_path}' is an encoder, not a causal language model")
    path = Path(name_or_path).expanduser()
    if path.exists() and not is_gguf(path) and not (path.is_dir() and (path / "config.json").is_file()):
        raise LMSanitatorError(f"causal LM '{name_or_path}' is neither a .gguf file nor a model folder")
    try:
        folder = resolve_model_path(name_or_path)  # a hub id: fails fast when offline
        if is_gguf(folder):
            folder = str(gguf_folder(folder))
        config = AutoConfig.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    except LMSanitatorError:
        raise
    except Exception as exc:
        raise LMSanitatorError(f"cannot load causal LM '{name_or_path}': {first_line(exc)}") from None
    if config.model_type in ENCODER_TYPES and not getattr(config, "is_decoder", False):
        raise LMSanitatorError(
            f"'{name_or_path}' is a '{config.model_type}' encoder, not a causal language model"
        )
    prepare_tokenizer(tok)
    model.to(device).eval()
    return CausalLM(name=str(name_or_path), model=model, tokenizer=tok)
