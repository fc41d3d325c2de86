"""Encoders and tokenizers: an :class:`Encoder` wraps one pretrained Transformer encoder (optionally
with its MLM head) or the body of a decoder LLM (``LlamaModel``, ``Gemma3TextModel``: no LM head),
its tokenizer and where it came from, and reads the *target* output that task-agnostic backdoors
control (see :mod:`lmsanitator.models.taps`; a decoder's sequence feature is the ``last`` token).

What differs between architectures (token type ids, where [CLS] sits, the BERT hyper-parameters,
BERT's layer) is read from the row of :mod:`lmsanitator.core.architectures`, never from name lists.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmsanitator.core.architectures import ARCHITECTURES, DECODER_TYPES, ENCODER_TYPES, Architecture
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models.decoder import gguf_folder, is_gguf, prepare_tokenizer
from lmsanitator.models.last_layer import find_bert_style_last_layer, last_layer_target_rows
from lmsanitator.models.registry import DEFAULT_MODEL, first_line, quiet_transformers, resolve_model_path
from lmsanitator.models.taps import TAPS, tap


@dataclass
class Encoder:
    """A pretrained encoder (or decoder body), its tokenizer and where it came from."""

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
    def arch(self) -> Architecture:
        """This model type's row of the architecture table.

        :func:`load_encoder` refuses types the table lacks; an Encoder built by hand around such a
        model gets a neutral row (token type ids passed, [CLS] first, not BERT-like, no fast last
        layer), which is how those models were always treated.
        """
        row = ARCHITECTURES.get(self.model_type)
        return row if row is not None else Architecture(self.model_type)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    @property
    def bert_like(self) -> bool:
        """The paper's BERT hyper-parameters apply (T_L = 0.2, POR utility weight 0.5)."""
        return self.arch.bert_like

    @property
    def is_decoder(self) -> bool:
        """A decoder LLM's body: causal attention, no [CLS]; its sequence feature is the last token."""
        return self.arch.kind == "decoder"

    @property
    def sequence_target(self) -> str:
        """The tap of a sequence-level feature: ``cls`` on encoders, ``last`` on decoders."""
        return self.arch.sequence_target

    @property
    def cls_last(self) -> bool:
        """XLNet-style models put [CLS] at the end of the sequence."""
        return self.arch.cls_last

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

    def weights_changed(self) -> None:
        """Say that ``model``'s weights were rewritten in place (fine-tuning, an implant): the cached
        :meth:`fingerprint` is dropped and computed again from the new weights when next asked."""
        self._fingerprint = None

    def require_target(self, target: str) -> None:
        if target not in TAPS:
            raise LMSanitatorError(f"unknown target '{target}': choose one of {', '.join(TAPS)}")
        if target == "cls" and self.is_decoder:
            raise LMSanitatorError(
                f"target 'cls' reads the first token, which the decoder '{self.name}' computes before it "
                "has seen the input; use 'last'"
            )
        if target == "mask" and getattr(self.tokenizer, "mask_token_id", None) is None:
            raise LMSanitatorError(
                f"target 'mask' needs a mask token, and the tokenizer of '{self.name}' has none"
            )
        if target == "cls" and getattr(self.tokenizer, "cls_token_id", None) is None and not self.cls_last:
            # models without [CLS] still have a first position; say so rather than guess silently
            warnings.warn(
                f"tokenizer of '{self.name}' has no [CLS]; 'cls' reads the first position", stacklevel=2
            )

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

    def model_inputs(self, batch) -> dict:
        """The keyword arguments of the backbone for a tokenized ``batch``: ids, attention mask and,
        where the architecture takes them, token type ids (RoBERTa-style models, DistilBERT and
        ModernBERT do not, although a BERT tokenizer hands them out)."""
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch and self.arch.token_types:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        return kwargs

    def forward(self, batch, *, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's last hidden state (batch x seq x width).

        ``inputs_embeds`` replaces the token embeddings (soft prompts); ``batch`` still supplies
        the attention mask, token type ids and the ids the taps use to find positions.
        """
        kwargs = self.model_inputs(batch)
        if inputs_embeds is not None:
            del kwargs["input_ids"]
            kwargs["inputs_embeds"] = inputs_embeds
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
        read position per row (:mod:`lmsanitator.models.last_layer`); anything else takes the full pass.
        """
        last = self._last_bert_layer() if target in ("cls", "mask") and not self.model.training else None
        if last is None:
            return self.tap(self.forward(batch, inputs_embeds=inputs_embeds), batch, target, exclude=exclude)
        return last_layer_target_rows(self, last, batch, target, inputs_embeds)

    def _last_bert_layer(self):
        """The backbone's last layer when the fast last layer applies to it, else None (cached)."""
        if self._bert_last is False:
            self._bert_last = find_bert_style_last_layer(
                self.backbone, self.model.config, self.arch.bert_style_layer
            )
        return self._bert_last

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


def load_encoder(
    name_or_path: str = DEFAULT_MODEL,
    *,
    mlm_head: bool | None = None,
    device: str = "cpu",
    max_length: int = 128,
    trust_remote_code: bool = False,
) -> Encoder:
    """Load an encoder, or a decoder LLM's body, by bundled name, hub id, local folder or ``.gguf``
    file (dequantised once into the user's cache, :mod:`lmsanitator.models.decoder`).

    ``mlm_head=None`` keeps the MLM head when the checkpoint has one; ``False`` loads the bare
    encoder; ``True`` requires the head (a decoder has none).
    """
    quiet_transformers()
    from transformers import (  # noqa: PLC0415  heavy: transformers, only when a model is loaded
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    path = resolve_model_path(name_or_path)
    folder = str(gguf_folder(path)) if is_gguf(path) else path
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:  # unreadable folder, unknown hub id, no network
        raise LMSanitatorError(f"cannot load model '{name_or_path}': {first_line(exc)}") from None
    mtype = getattr(config, "model_type", "?")
    decoder = mtype in DECODER_TYPES
    if not decoder and (mtype not in ENCODER_TYPES or getattr(config, "is_decoder", False)):
        raise LMSanitatorError(
            f"model '{name_or_path}' is a '{mtype}' model, not a Transformer encoder or a supported "
            f"decoder ({', '.join(sorted(DECODER_TYPES))})"
        )
    archs = getattr(config, "architectures", None) or []
    ckpt_has_head = not decoder and any(a.endswith("ForMaskedLM") for a in archs)
    if mlm_head and not ckpt_has_head:
        raise LMSanitatorError(f"model '{name_or_path}' has no MLM head (architectures: {archs or 'none'})")
    want_head = ckpt_has_head if mlm_head is None else mlm_head
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        cls = AutoModelForMaskedLM if want_head else AutoModel  # a decoder: its body, no LM head
        # decoders train in float32 here (a hub checkpoint may be stored in bf16); encoders load as before
        extra = {"dtype": torch.float32} if decoder else {}
        model = cls.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
    except Exception as exc:
        raise LMSanitatorError(f"cannot load model '{name_or_path}': {first_line(exc)}") from None
    if decoder:
        prepare_tokenizer(tokenizer)
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
