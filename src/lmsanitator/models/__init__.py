"""Models: loading (bundled name, folder, .gguf, hub id), encoders, decoder LLMs, feature taps and
causal LMs.

``registry`` (where models come from, the user's cache dir), ``encoder`` (:class:`Encoder`,
:func:`load_encoder`: encoders and decoder bodies), ``decoder`` (GGUF -> cached safetensors copy,
decoder tokenizers), ``taps`` (target rows), ``last_layer`` (the fast one-row last layer), ``causal``
(ONION's causal LM) and ``testing``: :func:`tiny_encoder` / :func:`tiny_decoder` / ``TINY_ARCHS`` are
test-only helpers (random tiny models), kept importable from here because the tests use them.
"""

from lmsanitator.core.architectures import DECODER_TYPES, ENCODER_TYPES
from lmsanitator.models.causal import CausalLM, load_causal_lm
from lmsanitator.models.decoder import gguf_folder
from lmsanitator.models.encoder import Encoder, load_encoder
from lmsanitator.models.registry import (
    BUNDLED,
    BUNDLED_CAUSAL,
    DEFAULT_MODEL,
    BundledModel,
    cache_dir,
    resolve_model_path,
)
from lmsanitator.models.taps import TAPS, TARGETS, special_ids, tap, target_positions
from lmsanitator.models.testing import TINY_ARCHS, TINY_DECODERS, tiny_decoder, tiny_encoder

__all__ = [
    "BUNDLED",
    "BUNDLED_CAUSAL",
    "BundledModel",
    "CausalLM",
    "DECODER_TYPES",
    "DEFAULT_MODEL",
    "ENCODER_TYPES",
    "Encoder",
    "TAPS",
    "TARGETS",
    "TINY_ARCHS",
    "TINY_DECODERS",
    "cache_dir",
    "gguf_folder",
    "load_causal_lm",
    "load_encoder",
    "resolve_model_path",
    "special_ids",
    "tap",
    "target_positions",
    "tiny_decoder",
    "tiny_encoder",
]
