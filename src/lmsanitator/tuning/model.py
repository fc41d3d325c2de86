"""A downstream model: a frozen encoder + a peft adapter (or full fine-tuning) + a head.

:class:`TunedModel` knows its task (labels, template, verbalizer), encodes raw inputs, and gives
in one forward pass both the logits and the *target feature* of the encoder that task-agnostic
backdoors control (:meth:`TunedModel.forward_with_features`):

* ``cls``    -- the [CLS] last hidden state (p-tuning-v2, prompt-tuning, lora, full);
* ``mask``   -- the [MASK] last hidden state (p-tuning);
* ``tokens`` -- every position that belongs to an input word (token classification);
* ``last``   -- the last real token, on decoder LLMs (every method; see :mod:`lmsanitator.tuning.methods`).

Prepended virtual tokens (prompt-tuning, p-tuning) add positions in front of the input; the hidden
states are cut back to the input positions before any tap, so feature positions always refer to
the tokenizer's ``input_ids``. Tokenisation lives in :mod:`lmsanitator.tuning.encoding`, the peft
setup in :mod:`lmsanitator.tuning.adapter`, the folder format in :mod:`lmsanitator.tuning.artifact`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmsanitator.core.architectures import architecture
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.metrics.classification import accuracy, flatten, macro_f1
from lmsanitator.models import Encoder, tap
from lmsanitator.tuning import encoding
from lmsanitator.tuning.adapter import attach_adapter, first_line, mlm_head_of, quiet_peft
from lmsanitator.tuning.artifact import load_tuned, save_tuned, tune_info
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.encoding import IGNORE, TaskInfo
from lmsanitator.tuning.methods import Method, get_method


@dataclass
class ForwardOutput:
    """Logits and target features of one forward pass.

    Sequence tasks: ``logits`` is (batch x labels), ``logit_rows`` = 0..batch-1.
    Token tasks: ``logits`` has one row per input *word* (first sub-token), in input order, and
    ``logit_rows`` gives the input each row belongs to; words cut off by truncation have no row.
    ``features`` (rows x hidden) are the target features and ``rows`` their input index.
    Unpacks as ``logits, features, rows = out``.
    """

    logits: torch.Tensor
    features: torch.Tensor
    rows: torch.Tensor
    logit_rows: torch.Tensor
    target: str = "cls"
    words: list[int] = field(default_factory=list)  # token tasks: words scored per input

    def __iter__(self):
        return iter((self.logits, self.features, self.rows))


class TunedModel(nn.Module):
    """A downstream classifier on a (frozen) encoder. Build with :class:`~lmsanitator.tuning.Tuner`
    or :meth:`load`; predict with :meth:`predict`.

    ``changed`` names the options the user set away from their defaults (recorded in tune.json;
    default: ``config.changed()``).
    """

    def __init__(
        self,
        encoder: Encoder,
        task: TaskInfo,
        config: TuneConfig,
        *,
        adapter_dir: str | Path | None = None,
        changed: list[str] | None = None,
    ):
        super().__init__()
        quiet_peft()
        self.method: Method = get_method(config.method)
        self.method.check(encoder.model_type, task.kind)
        self.arch = architecture(encoder.model_type)
        self.config = config
        self.changed_options: list[str] | None = config.changed() if changed is None else list(changed)
        self.task = task
        self.tokenizer = encoder.tokenizer
        self.model_type = encoder.model_type
        self.cls_last = encoder.cls_last
        self.base_name, self.base_path = encoder.name, encoder.path
        self.base_fingerprint = encoder.fingerprint()
        self.hidden_size = encoder.hidden_size
        self.target = self.method.target_on(self.arch, task.kind)
        if self.target == "mask":
            encoder.require_target("mask")
        self.n_virtual = int(config.prefix_len) if self.method.prepends_tokens else 0
        self.report: dict = {}
        base = self._build_heads(encoder)
        n_prefix = self.n_virtual or (config.prefix_len if self.method.peft_type == "prefix" else 0) or 0
        self.max_length = encoding.max_length_room(
            config.max_length or 128,
            self.tokenizer,
            self.arch.positions,
            getattr(base.config, "max_position_embeddings", None),
            n_prefix,
        )
        self.backbone = attach_adapter(self.method, config, base, encoder, self.n_virtual, adapter_dir)
        self.to(encoder.device)
        self._probe()

    # ================================================================== construction helpers
    def _build_heads(self, encoder: Encoder) -> nn.Module:
        """Set the MLM head (verbalizer) or the linear head; return the encoder copy to adapt
        (never the caller's encoder)."""
        task, config = self.task, self.config
        self.verbalizer_words: tuple[str, ...] | None = None
        mlm_head = None
        if self.target == "mask" and config.use_verbalizer and encoder.has_mlm_head and task.verbalizer:
            mlm_copy = copy.deepcopy(encoder.model)
            mlm_head = mlm_head_of(mlm_copy)
            if mlm_head is not None:
                ids = encoding.verbalizer_ids(self.tokenizer, task.verbalizer)
                base = mlm_copy.base_model
        if mlm_head is None:
            base = copy.deepcopy(encoder.backbone)
        self.mlm_head = mlm_head
        if mlm_head is not None:
            self.verbalizer_words = task.verbalizer
            for p in mlm_head.parameters():
                p.requires_grad_(False)
            self.register_buffer("verbalizer_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        else:
            self.verbalizer_ids = None
        hidden = int(getattr(base.config, "hidden_size", None) or base.config.d_model)
        self.head = None if mlm_head is not None else nn.Linear(hidden, len(task.labels))
        self.drop = nn.Dropout(config.head_dropout)
        return base

    def _probe(self) -> None:
        """One tiny forward pass: errors now, and a prefix the model silently ignores, are caught."""
        texts = ["a probe sentence"] if self.task.kind == "sequence" else [["a", "probe"]]
        pairs = ["a second field"] if self.task.pair and self.task.kind == "sequence" else None
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                batch = self.collate(self.encode(texts, pairs))
                h = self._hidden(batch)
                if self.method.peft_type == "prefix":
                    plain = self.base_model()(**self._plain_kwargs(batch)).last_hidden_state
                    if torch.allclose(h, plain):
                        raise LMSanitatorError(
                            f"method '{self.method.name}' has no effect on '{self.model_type}': "
                            "the model ignores the key/value prefix"
                        )
        except LMSanitatorError:
            raise
        except Exception as exc:
            raise LMSanitatorError(
                f"method '{self.method.name}' does not run on '{self.model_type}': {first_line(exc)}"
            ) from None
        finally:
            self.train(was)

    # ================================================================== encoding
    @property
    def labels(self) -> tuple[str, ...]:
        return self.task.labels

    @property
    def num_labels(self) -> int:
        return len(self.task.labels)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def apply_template(self, text: str) -> str:
        return encoding.apply_template(self.task.template, text, self.tokenizer.mask_token)

    def encode(
        self, texts: Sequence, pairs: Sequence[str | None] | None = None, labels: Sequence | None = None
    ) -> list[dict]:
        """Tokenize raw inputs (strings, or word lists for token tasks) into padding-free items."""
        if pairs is not None and len(pairs) != len(texts):
            raise LMSanitatorError(f"{len(texts)} texts but {len(pairs)} text pairs")
        if self.task.kind == "token":
            return encoding.encode_words(self.tokenizer, texts, self.max_length, labels)
        template = self.task.template if self.target == "mask" else None
        return encoding.encode_texts(
            self.tokenizer, texts, pairs, self.max_length, template=template, labels=labels
        )

    def encode_examples(self, examples) -> list[dict]:
        if self.task.kind == "token":
            return self.encode([e.tokens for e in examples], None, [e.label for e in examples])
        pairs = [e.text_pair for e in examples] if any(e.text_pair is not None for e in examples) else None
        return self.encode([e.text for e in examples], pairs, [e.label for e in examples])

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Pad a list of items to the longest (dynamic padding) on the tokenizer's padding side."""
        return encoding.collate(
            items,
            self.tokenizer,
            virtual_tokens=self.n_virtual,
            token_task=self.task.kind == "token",
            device=self.device,
        )

    # ================================================================== forward
    def base_model(self) -> nn.Module:
        return self.backbone if self.method.peft_type is None else self.backbone.get_base_model()

    def _plain_kwargs(self, batch) -> dict:
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch and self.arch.token_types:
            kw["token_type_ids"] = batch["token_type_ids"]
        return kw

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position ids the model would use without a prefix (the cache would shift them)."""
        return encoding.position_ids(ids, self.arch.positions, self.base_model().config.pad_token_id)

    def _hidden(self, batch) -> torch.Tensor:
        """Last hidden state aligned with ``batch["input_ids"]`` (virtual positions removed)."""
        base = self.base_model()
        kw = self._plain_kwargs(batch)
        ids, am = kw["input_ids"], kw["attention_mask"]
        bsz = ids.shape[0]
        pt = self.method.peft_type
        if pt in ("prompt", "p-tuning"):
            L = self.n_virtual
            emb = base.get_input_embeddings()(kw.pop("input_ids"))
            prompts = self.backbone.get_prompt(batch_size=bsz).to(emb.dtype)
            kw["inputs_embeds"] = torch.cat([prompts, emb], dim=1)
            kw["attention_mask"] = torch.cat([am.new_ones(bsz, L), am], dim=1)
            if "token_type_ids" in kw:
                kw["token_type_ids"] = torch.cat(
                    [kw["token_type_ids"].new_zeros(bsz, L), kw["token_type_ids"]], dim=1
                )
            return base(**kw).last_hidden_state[:, L:]
        if pt == "prefix":
            L = self.backbone.active_peft_config.num_virtual_tokens
            kw["attention_mask"] = torch.cat([am.new_ones(bsz, L), am], dim=1)
            kw["past_key_values"] = self.backbone.get_prompt(batch_size=bsz)
            kw["position_ids"] = self._positions(ids)
            return base(**kw).last_hidden_state
        return base(**kw).last_hidden_state

    def _target(self, hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.target == "tokens":
            rows, cols = (batch["word_index"] >= 0).nonzero(as_tuple=True)
            return hidden[rows, cols], rows
        return tap(
            hidden,
            batch["input_ids"],
            batch["attention_mask"],
            self.target,
            self.tokenizer,
            cls_last=self.cls_last,
        )

    def _logits(self, hidden: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if self.target == "tokens":
            return self.head(self.drop(hidden))  # batch x seq x labels
        if self.mlm_head is not None:
            return self.mlm_head(feats)[:, self.verbalizer_ids]
        return self.head(self.drop(feats))

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, features, rows, hidden)``; token tasks: logits per position (batch x seq x labels)."""
        hidden = self._hidden(batch)
        feats, rows = self._target(hidden, batch)
        return self._logits(hidden, feats), feats, rows, hidden

    def loss(self, batch: dict) -> torch.Tensor:
        logits = self(batch)[0]
        y = batch["labels"]
        if self.task.kind == "token":
            return nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE
            )
        return nn.functional.cross_entropy(logits, y)

    def forward_with_features(
        self, texts: Sequence, pairs: Sequence[str | None] | None = None, *, grad: bool = False
    ) -> ForwardOutput:
        """Logits and the encoder's target features of ``texts`` in ONE forward pass (eval mode).

        Token tasks take word lists (or whitespace-split strings).
        """
        was = self.training
        self.eval()
        try:
            with torch.set_grad_enabled(grad):
                batch = self.collate(self.encode(texts, pairs))
                logits, feats, rows, _ = self(batch)
                if self.task.kind == "token":
                    r, c = batch["first"].nonzero(as_tuple=True)
                    words = [int(x) for x in torch.bincount(r, minlength=len(texts)).tolist()]
                    return ForwardOutput(logits[r, c], feats, rows, r, self.target, words)
                return ForwardOutput(
                    logits, feats, rows, torch.arange(len(texts), device=logits.device), self.target
                )
        finally:
            self.train(was)

    # ================================================================== prediction
    def _order(self, texts, pairs) -> list[int]:
        def n(i):
            t = texts[i]
            return len(t) if not isinstance(t, str) else len(t) + (len(pairs[i]) if pairs and pairs[i] else 0)

        return sorted(range(len(texts)), key=lambda i: -n(i))  # similar lengths share a batch

    def predict(
        self, texts: Sequence, pairs: Sequence[str | None] | None = None, batch_size: int | None = None
    ):
        """Class probabilities.

        Sequence tasks: an array (inputs x labels). Token tasks: a list with one array
        (words x labels) per input; words cut off by truncation get uniform probabilities.
        """
        bs = batch_size or self.config.eval_batch_size
        texts = list(texts)
        pairs = list(pairs) if pairs is not None else None
        order = self._order(texts, pairs)
        out: list = [None] * len(texts)
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            fo = self.forward_with_features(
                [texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None
            )
            probs = torch.softmax(fo.logits.float(), dim=-1).cpu().numpy()
            if self.task.kind == "token":
                start = 0
                for j, i in enumerate(idx):
                    k = fo.words[j]
                    n_words = len(texts[i]) if not isinstance(texts[i], str) else len(texts[i].split())
                    p = np.full((n_words, self.num_labels), 1.0 / self.num_labels, dtype=np.float32)
                    p[:k] = probs[start : start + k]
                    out[i] = p
                    start += k
            else:
                for j, i in enumerate(idx):
                    out[i] = probs[j]
        if self.task.kind == "token":
            return out
        return np.stack(out) if out else np.zeros((0, self.num_labels), dtype=np.float32)

    def predict_labels(self, texts: Sequence, pairs: Sequence[str | None] | None = None):
        probs = self.predict(texts, pairs)
        if self.task.kind == "token":
            return [p.argmax(-1).tolist() for p in probs]
        return probs.argmax(-1).tolist()

    def evaluate(self, examples) -> dict:
        """Clean accuracy and macro-F1 on labelled examples (token tasks: per word)."""
        if not examples:
            raise LMSanitatorError("cannot evaluate on an empty split")
        if self.task.kind == "token":
            pred = self.predict_labels([e.tokens for e in examples])
            y, p = flatten([e.label for e in examples]), flatten(pred)
            present = sorted(set(y))
            return {
                "accuracy": accuracy(y, p),
                "macro_f1": macro_f1(y, p, present),
                "n": len(examples),
                "words": len(y),
            }
        pairs = [e.text_pair for e in examples] if any(e.text_pair is not None for e in examples) else None
        pred = self.predict_labels([e.text for e in examples], pairs)
        y = [e.label for e in examples]
        return {
            "accuracy": accuracy(y, pred),
            "macro_f1": macro_f1(y, pred, list(range(self.num_labels))),
            "n": len(examples),
        }

    # ================================================================== persistence
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)

    def info(self) -> dict:
        """What ``tune.json`` records (see :mod:`lmsanitator.tuning.artifact`)."""
        return tune_info(self)

    def save(self, folder: str | Path) -> None:
        """Write adapter (safetensors), head and ``tune.json`` into an existing folder."""
        save_tuned(self, folder)

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder | None = None, *, device: str = "cpu") -> TunedModel:
        """Load a folder written by :meth:`save`.

        The base encoder is loaded from the recorded model (or given as ``encoder``); a base whose
        fingerprint differs from the one the adapter was trained on is refused.
        """
        return load_tuned(cls, folder, encoder, device=device)
