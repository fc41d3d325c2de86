"""Models: loading (bundled name, folder, .gguf, hub id), encoders, feature taps and causal LMs."""

from lmsanitator.models.encoder import (  # noqa: F401
    BERT_LIKE_TYPES,
    BUNDLED,
    BUNDLED_CAUSAL,
    DEFAULT_MODEL,
    ENCODER_TYPES,
    TARGETS,
    TINY_ARCHS,
    CausalLM,
    Encoder,
    load_causal_lm,
    load_encoder,
    resolve_model_path,
    special_ids,
    tap,
    target_positions,
    tiny_encoder,
)

__all__ = [
    "BERT_LIKE_TYPES",
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
