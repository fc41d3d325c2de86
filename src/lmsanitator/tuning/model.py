"""A downstream model: a frozen encoder + a peft adapter (or full fine-tuning) + a head.

:class:`TunedModel` knows its task (labels, template, verbalizer), encodes raw inputs, and gives
in one forward pass both the logits and the *target feature* of the encoder that task-agnostic
backdoors control (:meth:`TunedModel.forward_with_features`):

* ``cls``    -- the [CLS] last hidden state (p-tuning-v2, prompt-tuning, lora, full);
* ``mask``   -- the [MASK] last hidden state (p-tuning);
* ``tokens`` -- every position that belongs to an input word (token classification).

Prepended virtual tokens (prompt-tuning, p-tuning) add positions in front of the input; the hidden
states are cut back to the input positions before any tap, so feature positions always refer to
the tokenizer's ``input_ids``.

Folder layout written by :meth:`TunedModel.save`: ``tune.json`` (method, model, fingerprint, task,
labels, settings, metrics), the peft adapter (``adapter_config.json``,
``adapter_model.safetensors``) or, for full fine-tuning, ``encoder.safetensors``, and
``head.safetensors`` when there is a linear head.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.metrics.classification import accuracy, flatten, macro_f1
from lmsanitator.models import Encoder, load_encoder, tap
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.methods import ROBERTA_POSITIONS, Method, get_method

FORMAT_VERSION = 1
TUNE_JSON = "tune.json"
HEAD_FILE = "head.safetensors"
FULL_FILE = "encoder.safetensors"
NO_TOKEN_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "distilbert", "modernbert"}
IGNORE = -100


def _quiet_peft() -> None:
    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", message=".*[Tt]oken type ids.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    logging.getLogger("peft").setLevel(logging.ERROR)


@dataclass
class TaskInfo:
    """What a tuned model keeps of its task."""

    name: str
    kind: str
    labels: tuple[str, ...]
    template: str = "{mask} : {text}"
    verbalizer: tuple[str, ...] | None = None
    pair: bool = False

    @classmethod
    def of(cls, task) -> TaskInfo:
        return cls(
            name=task.name,
            kind=task.kind,
            labels=tuple(task.labels),
            template=task.template,
            verbalizer=tuple(task.verbalizer) if task.verbalizer else None,
            pair=task.is_pair,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["verbalizer"] = list(self.verbalizer) if self.verbalizer else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskInfo:
        return cls(
            name=d["name"],
            kind=d["kind"],
            labels=tuple(d["labels"]),
            template=d.get("template", "{mask} : {text}"),
            verbalizer=tuple(d["verbalizer"]) if d.get("verbalizer") else None,
            pair=bool(d.get("pair")),
        )


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


def _mlm_head_of(mlm_model: nn.Module) -> nn.Module | None:
    """The MLM head of a ``*ForMaskedLM`` model when it is one module beside the encoder."""
    prefix = getattr(mlm_model, "base_model_prefix", "")
    others = [m for name, m in mlm_model.named_children() if name != prefix]
    return others[0] if len(others) == 1 else None


def _input_dim(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


class TunedModel(nn.Module):
    """A downstream classifier on a (frozen) encoder. Build with :class:`~lmsanitator.tuning.Tuner`
    or :meth:`load`; predict with :meth:`predict`."""

    def __init__(
        self, encoder: Encoder, task: TaskInfo, config: TuneConfig, *, adapter_dir: str | Path | None = None
    ):
        super().__init__()
        _quiet_peft()
        self.method: Method = get_method(config.method)
        self.method.check(encoder.model_type, task.kind)
        self.config = config
        self.task = task
        self.tokenizer = encoder.tokenizer
        self.model_type = encoder.model_type
        self.cls_last = encoder.cls_last
        self.base_name, self.base_path = encoder.name, encoder.path
        self.base_fingerprint = encoder.fingerprint()
        self.hidden_size = encoder.hidden_size
        self.target = "tokens" if task.kind == "token" else self.method.target
        if self.target == "mask":
            encoder.require_target("mask")
        self.n_virtual = int(config.prefix_len) if self.method.prepends_tokens else 0
        self.report: dict = {}

        # ---- which modules: encoder copy (never the caller's encoder), MLM head, linear head
        self.verbalizer_words: tuple[str, ...] | None = None
        verbalizer_ids = None
        mlm_head = None
        if self.target == "mask" and config.use_verbalizer and encoder.has_mlm_head and task.verbalizer:
            mlm_copy = copy.deepcopy(encoder.model)
            mlm_head = _mlm_head_of(mlm_copy)
            if mlm_head is not None:
                verbalizer_ids = self._verbalizer_ids(task.verbalizer)
                base = mlm_copy.base_model
        if mlm_head is None:
            base = copy.deepcopy(encoder.backbone)
        self.mlm_head = mlm_head
        if mlm_head is not None:
            self.verbalizer_words = task.verbalizer
            for p in mlm_head.parameters():
                p.requires_grad_(False)
            self.register_buffer(
                "verbalizer_ids", torch.tensor(verbalizer_ids, dtype=torch.long), persistent=False
            )
        else:
            self.verbalizer_ids = None
        hidden = int(getattr(base.config, "hidden_size", None) or base.config.d_model)
        self.head = None if mlm_head is not None else nn.Linear(hidden, len(task.labels))
        self.drop = nn.Dropout(config.head_dropout)

        # ---- the adapter
        self.max_length = self._max_length(base, config, task)
        if self.method.peft_type is None:
            self.backbone = base
            for n, p in base.named_parameters():  # the pooler and XLNet's mask_emb never reach the output
                p.requires_grad_(not (n.startswith("pooler.") or n == "mask_emb"))
        else:
            for p in base.parameters():
                p.requires_grad_(False)
            try:
                if adapter_dir is not None:
                    from peft import PeftModel

                    self.backbone = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
                else:
                    from peft import get_peft_model

                    pcfg = self.method.peft_config(
                        encoder,
                        self.n_virtual or int(config.prefix_len or 0),
                        config.lora_r,
                        config.lora_alpha,
                        config.lora_dropout,
                        config.prompt_encoder_hidden,
                    )
                    self.backbone = get_peft_model(base, pcfg)
            except LMSanitatorError:
                raise
            except Exception as exc:
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise LMSanitatorError(
                    f"cannot set up {self.method.name} on '{encoder.model_type}': {msg}"
                ) from None
            for (
                n,
                p,
            ) in (
                self.backbone.named_parameters()
            ):  # only the adapter trains (peft leaves e.g. XLNet's mask_emb)
                p.requires_grad_(adapter_dir is None and ("lora_" in n or n.startswith("prompt_encoder")))
        self.to(encoder.device)
        self._probe()

    # ================================================================== construction helpers
    def _verbalizer_ids(self, words: Sequence[str]) -> list[int]:
        ids = []
        for w in words:
            pieces = self.tokenizer.tokenize(" " + w) or self.tokenizer.tokenize(w)
            if not pieces:
                raise LMSanitatorError(f"label word '{w}' is empty after tokenization")
            ids.append(int(self.tokenizer.convert_tokens_to_ids(pieces[0])))
        if len(set(ids)) != len(ids):
            raise LMSanitatorError(
                f"label words {', '.join(words)} share a first sub-token; choose distinct words"
            )
        return ids

    def _max_length(self, base: nn.Module, config: TuneConfig, task: TaskInfo) -> int:
        want = config.max_length or 128
        limit = getattr(self.tokenizer, "model_max_length", want) or want
        want = min(want, int(limit) if limit < 1e6 else want)
        if self.model_type not in ("xlnet", "deberta-v2", "deberta"):  # absolute position embeddings
            max_pos = int(getattr(base.config, "max_position_embeddings", 512) or 512)
            if self.model_type in ROBERTA_POSITIONS or self.model_type in ("mpnet",):
                max_pos -= 2  # positions start after the padding index
            room = max_pos - (
                self.n_virtual or (config.prefix_len if self.method.peft_type == "prefix" else 0) or 0
            )
            if room < 8:
                raise LMSanitatorError(
                    f"prefix length {config.prefix_len} leaves no room for the input "
                    f"(the model has {max_pos} positions)"
                )
            want = min(want, room)
        return int(want)

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
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LMSanitatorError(
                f"method '{self.method.name}' does not run on '{self.model_type}': {msg}"
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
        return self.task.template.replace("{mask}", self.tokenizer.mask_token).replace("{text}", text)

    def encode(
        self, texts: Sequence, pairs: Sequence[str | None] | None = None, labels: Sequence | None = None
    ) -> list[dict]:
        """Tokenize raw inputs (strings, or word lists for token tasks) into padding-free items."""
        tok = self.tokenizer
        if pairs is not None and len(pairs) != len(texts):
            raise LMSanitatorError(f"{len(texts)} texts but {len(pairs)} text pairs")
        if self.task.kind == "token":
            words = [list(t) if not isinstance(t, str) else t.split() for t in texts]
            if any(not w for w in words):
                raise LMSanitatorError("token classification input with no tokens")
            try:
                enc = tok(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
            except ValueError as exc:
                raise LMSanitatorError(f"tokenizer cannot take pre-split words: {exc}") from None
            items = []
            for i in range(len(words)):
                wids = enc.word_ids(i)
                item = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
                word_index, first, prev = [], [], None
                for w in wids:
                    word_index.append(-1 if w is None else w)
                    first.append(w is not None and w != prev)
                    prev = w
                item["word_index"], item["first"] = word_index, first
                item["n_words"] = len(words[i])
                if labels is not None:
                    y = labels[i]
                    item["labels"] = [int(y[w]) if f else IGNORE for w, f in zip(word_index, first)]
                items.append(item)
            return items
        first_field = [self.apply_template(t) for t in texts] if self.target == "mask" else list(texts)
        if pairs is not None and all(p is None for p in pairs):
            pairs = None
        if pairs is not None and any(p is None for p in pairs):
            raise LMSanitatorError("mixed inputs: some have a text_pair and some do not")
        enc = tok(
            first_field,
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=self.max_length,
        )
        items = []
        for i in range(len(texts)):
            item = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
            if self.target == "mask" and tok.mask_token_id not in item["input_ids"]:
                raise LMSanitatorError(
                    "the [MASK] of the P-tuning template was cut off by truncation; "
                    "put {mask} before {text} in the task template"
                )
            if labels is not None:
                item["labels"] = int(labels[i])
            items.append(item)
        return items

    def encode_examples(self, examples) -> list[dict]:
        if self.task.kind == "token":
            return self.encode([e.tokens for e in examples], None, [e.label for e in examples])
        pairs = [e.text_pair for e in examples] if any(e.text_pair is not None for e in examples) else None
        return self.encode([e.text for e in examples], pairs, [e.label for e in examples])

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Pad a list of items to the longest (dynamic padding) on the tokenizer's padding side."""
        tok = self.tokenizer
        T = max(len(it["input_ids"]) for it in items)
        # left padding (XLNet) would put pads between prepended virtual tokens and the text and so
        # change relative distances; with virtual tokens, pad on the right (taps find [CLS] by id)
        left = getattr(tok, "padding_side", "right") == "left" and not self.n_virtual

        def pad(seq, value):
            extra = [value] * (T - len(seq))
            return extra + list(seq) if left else list(seq) + extra

        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        batch = {
            "input_ids": torch.tensor([pad(it["input_ids"], pad_id) for it in items]),
            "attention_mask": torch.tensor([pad([1] * len(it["input_ids"]), 0) for it in items]),
        }
        if "token_type_ids" in items[0]:
            batch["token_type_ids"] = torch.tensor(
                [pad(it["token_type_ids"], getattr(tok, "pad_token_type_id", 0)) for it in items]
            )
        if "word_index" in items[0]:
            batch["word_index"] = torch.tensor([pad(it["word_index"], -1) for it in items])
            batch["first"] = torch.tensor([pad(it["first"], False) for it in items])
        if "labels" in items[0]:
            if self.task.kind == "token":
                batch["labels"] = torch.tensor([pad(it["labels"], IGNORE) for it in items])
            else:
                batch["labels"] = torch.tensor([it["labels"] for it in items])
        dev = self.device
        return {k: v.to(dev) for k, v in batch.items()}

    # ================================================================== forward
    def base_model(self) -> nn.Module:
        return self.backbone if self.method.peft_type is None else self.backbone.get_base_model()

    def _plain_kwargs(self, batch) -> dict:
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch and self.model_type not in NO_TOKEN_TYPES:
            kw["token_type_ids"] = batch["token_type_ids"]
        return kw

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position ids the model would use without a prefix (the cache would shift them)."""
        if self.model_type in ROBERTA_POSITIONS:
            pad = int(self.base_model().config.pad_token_id)
            m = (ids != pad).long()
            return torch.cumsum(m, dim=1) * m + pad
        return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)

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
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method.name,
            "model": self.base_name,
            "model_path": self.base_path,
            "model_type": self.model_type,
            "fingerprint": self.base_fingerprint,
            "task": self.task.name,
            "kind": self.task.kind,
            "labels": list(self.task.labels),
            "target": self.target,
            "virtual_tokens": self.n_virtual,
            "max_length": self.max_length,
            "verbalizer": list(self.verbalizer_words) if self.verbalizer_words else None,
            "head": "verbalizer (frozen MLM head at [MASK])"
            if self.mlm_head is not None
            else f"linear on {self.target}",
            "task_info": self.task.to_dict(),
            "config": self.config.to_dict(),
            **self.report,
        }

    def save(self, folder: str | Path) -> None:
        """Write adapter (safetensors), head and ``tune.json`` into an existing folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if self.method.peft_type is None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()},
                str(folder / FULL_FILE),
            )
        else:
            self.backbone.save_pretrained(str(folder), safe_serialization=True)
        if self.head is not None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                str(folder / HEAD_FILE),
            )
        with open(folder / TUNE_JSON, "w", encoding="utf-8") as f:
            json.dump(self.info(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder | None = None, *, device: str = "cpu") -> TunedModel:
        """Load a folder written by :meth:`save`.

        The base encoder is loaded from the recorded model (or given as ``encoder``); a base whose
        fingerprint differs from the one the adapter was trained on is refused.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        info = read_tune_json(folder)
        recorded = encoder is None
        if encoder is None:
            ref = info.get("model_path") or info["model"]
            if not Path(str(ref)).exists():
                ref = info["model"]
            encoder = load_encoder(ref, device=device)
        if encoder.fingerprint() != info["fingerprint"]:
            raise LMSanitatorError(
                f"adapter '{folder}' was trained on a different base model (fingerprint "
                f"{info['fingerprint'][:12]}..., this encoder {encoder.fingerprint()[:12]}...)"
            )
        try:
            config = TuneConfig.from_dict(info["config"])
            task = TaskInfo.from_dict(info["task_info"])
        except (KeyError, TypeError) as exc:
            raise LMSanitatorError(f"'{folder / TUNE_JSON}' is incomplete: {exc}") from None
        method = get_method(config.method)
        try:
            model = cls(encoder, task, config, adapter_dir=folder if method.peft_type else None)
            if method.peft_type is None:
                model.backbone.load_state_dict(load_file(str(folder / FULL_FILE)))
            if model.head is not None:
                model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        except LMSanitatorError:
            raise
        except Exception as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LMSanitatorError(f"cannot load the tuned model in '{folder}': {msg}") from None
        if recorded:
            model.base_name = info["model"]
        model.report = {
            k: info[k]
            for k in (
                "splits",
                "metrics",
                "accuracy",
                "macro_f1",
                "seconds",
                "history",
                "best_epoch",
                "trainable_parameters",
                "task_spec",
            )
            if k in info
        }
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        return model


def read_tune_json(folder: str | Path) -> dict:
    folder = Path(folder)
    p = folder / TUNE_JSON
    if not folder.is_dir():
        raise LMSanitatorError(f"adapter folder '{folder}' does not exist")
    if not p.is_file():
        raise LMSanitatorError(f"'{folder}' is not a tuned-model folder (no {TUNE_JSON})")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LMSanitatorError(f"cannot read '{p}': {exc}") from None
    for k in ("method", "model", "fingerprint", "labels", "config", "task_info"):
        if k not in info:
            raise LMSanitatorError(f"'{p}' lacks the field '{k}'")
    return info
