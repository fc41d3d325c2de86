"""Decoder LLMs: GGUF files turned into a cached safetensors folder, and their tokenizers.

transformers dequantises a GGUF file at every load (SmolLM2-135M: about a minute on one busy core,
Gemma 3 270M longer; reading even the config or the tokenizer parses the whole file) and cannot
``save_pretrained`` a model loaded that way ("quantized with gguf ... not serializable"). The first
load therefore builds a plain model from the config without ``quantization_config``, loads the
dequantised state dict into it and saves it with its tokenizer under
``cache_dir()/models/<sha256 of the .gguf>``; later loads read that folder like any model folder.
Content-addressed: an edited or replaced file never gets a stale copy, and two names for one file
share one copy. The folder is written atomically (a killed first load leaves no half copy).

Tokenizers (:func:`prepare_tokenizer`): a decoder's sequence feature is its last real token, so
inputs are padded on the **right**: real tokens then sit at positions 0..n-1 and, under the causal
mask, never attend to a pad, so a padded row computes exactly what the unpadded input does (left
padding would shift the positions and, with prepended soft prompts, put pads between prompt and
text). The ``last`` tap reads the attention mask, not the pad id, so it finds the last real token
whichever side a caller pads. The pad token is the EOS when the tokenizer has none; BOS is left to
the tokenizer (Gemma adds ``<bos>``, SmolLM2 adds none, as they were trained).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.models.registry import cache_dir, first_line, quiet_transformers

log = logging.getLogger("lmsanitator")
SOURCE_JSON = "source.json"  # written last into a cached copy: where it came from, how long it took
_CHUNK = 1 << 22


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def is_gguf(path: str | Path) -> bool:
    return str(path).endswith(".gguf") and Path(path).is_file()


def gguf_cache_folder(gguf: str | Path) -> Path:
    """Where the dequantised copy of ``gguf`` lives (whether or not it exists yet)."""
    return cache_dir() / "models" / file_sha256(gguf)


def gguf_folder(gguf: str | Path) -> Path:
    """A Hugging Face folder (safetensors, config, tokenizer) with the dequantised weights of the
    ``gguf`` file: the cached copy, made on first use."""
    gguf = Path(gguf)
    folder = gguf_cache_folder(gguf)
    if (folder / SOURCE_JSON).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log.info("dequantising %s once into %s", gguf, folder)
    try:
        with atomic_output_dir(folder, overwrite=True) as tmp:
            _convert(gguf, tmp)
            source = {"gguf": str(gguf), "sha256": folder.name, "seconds": round(time.perf_counter() - t0, 1)}
            (tmp / SOURCE_JSON).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    except LMSanitatorError:
        raise
    except Exception as exc:
        raise LMSanitatorError(f"cannot load '{gguf}': {first_line(exc)}") from None
    return folder


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into a plain model saved (with its tokenizer) in ``out``."""
    quiet_transformers()
    from transformers import (  # noqa: PLC0415  heavy: transformers, only when a model is loaded
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a plain model: save_pretrained works on it
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    del quantized
    plain.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def gguf_tokenizer(gguf: str | Path):
    """The tokenizer of a ``.gguf`` file without dequantising its weights (test models use the
    SmolLM2 tokenizer): from the cached model copy, or a tokenizer-only copy made on first use."""
    quiet_transformers()
    from transformers import AutoTokenizer  # noqa: PLC0415  heavy: transformers, only when loading

    gguf = Path(gguf)
    full = gguf_cache_folder(gguf)
    if (full / SOURCE_JSON).is_file():
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(full)))
    folder = cache_dir() / "tokenizers" / full.name
    if not (folder / "tokenizer_config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output_dir(folder, overwrite=True) as tmp:
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


def prepare_tokenizer(tok):
    """A decoder's tokenizer as the project uses it: a pad token (the EOS when it has none) and
    right padding (see the module docstring)."""
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise LMSanitatorError("the decoder's tokenizer has neither a pad nor an end-of-sequence token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
