"""Test-only: tiny randomly initialised encoders and decoders built from a config (fast tests;
architectures with no offline weights). Nothing in the package's own code paths uses this module."""

from __future__ import annotations

import torch
from tokenizers.processors import TemplateProcessing

from lmsanitator.core.architectures import architecture
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models.decoder import gguf_tokenizer
from lmsanitator.models.encoder import Encoder
from lmsanitator.models.registry import DEFAULT_MODEL, bundled_path, quiet_transformers, resolve_model_path

TINY_ARCHS = ("bert", "roberta", "albert", "deberta-v2", "mpnet", "xlnet")


def tiny_tokenizer(cls_last: bool):
    """The bundled MiniLM WordPiece tokenizer; for XLNet-style models, [CLS] moves to the end."""
    from transformers import AutoTokenizer  # noqa: PLC0415  heavy: transformers, only in tests

    tok = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
    if cls_last:
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single="$A [SEP] [CLS]",
            pair="$A [SEP] $B:1 [SEP]:1 [CLS]:1",
            special_tokens=[("[SEP]", sep_id), ("[CLS]", cls_id)],
        )
        tok.padding_side = "left"
    return tok


def tiny_encoder(
    arch: str = "bert", *, mlm_head: bool = False, seed: int = 0, hidden: int = 32, layers: int = 2
) -> Encoder:
    """A randomly initialised small model of a given architecture with a real tokenizer (test-only)."""
    quiet_transformers()
    import transformers as tf  # noqa: PLC0415  heavy: transformers, only in tests

    vocab = 30522
    common = dict(
        vocab_size=vocab,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    if arch == "bert":
        cfg = tf.BertConfig(hidden_size=hidden, **common)
    elif arch == "roberta":
        cfg = tf.RobertaConfig(
            hidden_size=hidden, pad_token_id=0, **{**common, "max_position_embeddings": 130}
        )
    elif arch == "albert":
        cfg = tf.AlbertConfig(hidden_size=hidden, embedding_size=16, pad_token_id=0, **common)
    elif arch == "deberta-v2":
        cfg = tf.DebertaV2Config(hidden_size=hidden, pad_token_id=0, **common)
    elif arch == "mpnet":
        cfg = tf.MPNetConfig(hidden_size=hidden, pad_token_id=0, **{**common, "max_position_embeddings": 130})
    elif arch == "xlnet":
        cfg = tf.XLNetConfig(
            vocab_size=vocab, d_model=hidden, n_layer=layers, n_head=2, d_inner=hidden * 2, pad_token_id=0
        )
    else:
        raise LMSanitatorError(f"unknown tiny architecture '{arch}': choose one of {', '.join(TINY_ARCHS)}")
    torch.manual_seed(seed)
    if mlm_head:
        if arch == "xlnet":
            raise LMSanitatorError("tiny xlnet has no masked-LM head")
        model = tf.AutoModelForMaskedLM.from_config(cfg)
    else:
        model = tf.AutoModel.from_config(cfg)
    model.eval()
    tok = tiny_tokenizer(cls_last=architecture(arch).cls_last)
    return Encoder(
        name=f"tiny-{arch}",
        path=f"tiny-{arch}",
        model=model,
        tokenizer=tok,
        has_mlm_head=mlm_head,
        max_length=64,
    )


TINY_DECODERS = ("llama", "gemma3_text")


def tiny_decoder(arch: str = "llama", *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Encoder:
    """A randomly initialised small decoder body (``LlamaModel`` / ``Gemma3TextModel``) with the real
    SmolLM2 tokenizer (vocabulary 49152, no BOS, pad = EOS, right padding), test-only."""
    quiet_transformers()
    import transformers as tf  # noqa: PLC0415  heavy: transformers, only in tests

    tok = gguf_tokenizer(bundled_path("smollm2"))
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if arch == "llama":
        cfg = tf.LlamaConfig(**common)
    elif arch == "gemma3_text":
        # a sliding window shorter than the test inputs, so the local layers are exercised too
        cfg = tf.Gemma3TextConfig(head_dim=hidden // 4, sliding_window=16, **common)
    else:
        raise LMSanitatorError(f"unknown tiny decoder '{arch}': choose one of {', '.join(TINY_DECODERS)}")
    torch.manual_seed(seed)
    model = tf.AutoModel.from_config(cfg, dtype=torch.float32).eval()
    return Encoder(
        name=f"tiny-{arch}",
        path=f"tiny-{arch}",
        model=model,
        tokenizer=tok,
        has_mlm_head=False,
        max_length=64,
    )
