"""Causal language models (perplexity for the ONION baseline), kept apart from the encoders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmsanitator.core.architectures import ENCODER_TYPES
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models.registry import (
    BUNDLED,
    BUNDLED_CAUSAL,
    first_line,
    package_folder,
    quiet_transformers,
    resolve_model_path,
)


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
    """A causal LM by bundled name (``smollm2``: a GGUF file, dequantised by transformers), a
    ``.gguf`` file, a local folder or a hub id (no remote code)."""
    quiet_transformers()
    from transformers import (  # noqa: PLC0415  heavy: transformers, only when a model is loaded
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    if name_or_path in BUNDLED:
        raise LMSanitatorError(f"'{name_or_path}' is an encoder, not a causal language model")
    if name_or_path in BUNDLED_CAUSAL:
        path = package_folder(*BUNDLED_CAUSAL[name_or_path], name_or_path)
        if not path.is_file():
            raise LMSanitatorError(f"'{path}' is missing: reinstall `{BUNDLED_CAUSAL[name_or_path][2]}`")
    else:
        path = Path(name_or_path).expanduser()
    kw: dict = {}
    if path.is_file() and path.suffix == ".gguf":
        folder, kw["gguf_file"] = str(path.parent), path.name
    elif path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LMSanitatorError(f"causal LM '{name_or_path}' is neither a .gguf file nor a model folder")
        folder = str(path)
    else:
        folder = resolve_model_path(name_or_path)  # a hub id: fails fast when offline
    try:
        config = AutoConfig.from_pretrained(folder, **kw)
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    except Exception as exc:
        raise LMSanitatorError(f"cannot load causal LM '{name_or_path}': {first_line(exc)}") from None
    if config.model_type in ENCODER_TYPES and not getattr(config, "is_decoder", False):
        raise LMSanitatorError(
            f"'{name_or_path}' is a '{config.model_type}' encoder, not a causal language model"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return CausalLM(name=str(name_or_path), model=model, tokenizer=tok)
