"""Models: loading (bundled name, folder, .gguf, hub id), encoders, feature taps and causal LMs.

``registry`` (where models come from), ``encoder`` (:class:`Encoder`, :func:`load_encoder`), ``taps``
(target rows), ``last_layer`` (the fast one-row last layer), ``causal`` (ONION's causal LM) and
``testing``: :func:`tiny_encoder` / ``TINY_ARCHS`` are test-only helpers (random tiny models), kept
importable from here because the tests use them.
"""

from lmsanitator.core.architectures import ENCODER_TYPES
from lmsanitator.models.causal import CausalLM, load_causal_lm
from lmsanitator.models.encoder import Encoder, load_encoder
from lmsanitator.models.registry import BUNDLED, BUNDLED_CAUSAL, DEFAULT_MODEL, resolve_model_path
from lmsanitator.models.taps import TARGETS, special_ids, tap, target_positions
from lmsanitator.models.testing import TINY_ARCHS, tiny_encoder

__all__ = [
    "BUNDLED",
    "BUNDLED_CAUSAL",
    "CausalLM",
    "DEFAULT_MODEL",
    "ENCODER_TYPES",
    "Encoder",
    "TARGETS",
    "TINY_ARCHS",
    "load_causal_lm",
    "load_encoder",
    "resolve_model_path",
    "special_ids",
    "tap",
    "target_positions",
    "tiny_encoder",
]
