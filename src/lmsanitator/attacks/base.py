"""Shared machinery of the task-agnostic backdoor attacks (POR, POR-NER, NeuBA, BToP).

An attack is fitted like an estimator: ``POR(AttackConfig(...)).fit(encoder)`` implants the
backdoor into ``encoder.model`` in place, then ``.verify(encoder)`` measures it on held-back
sentences the attack never saw (:mod:`lmsanitator.attacks.verify`), and ``.report()`` is what
``attack.json`` records. What ``fit`` learns or resolves lives in ``_``-suffixed attributes
(``settings_``, ``state_``, ``reference_``, ``target_``) created by ``fit`` only.

On a decoder LLM the ``cls`` target of POR and NeuBA is the last real token (``target_``: a causal
model has no [CLS], and its first position never sees the input); the PV schemes are the same.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lmsanitator.attacks.config import AttackConfig
from lmsanitator.attacks.verify import verify_implant
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import (
    PAPER_TRIGGERS,
    insert_trigger,
    load_corpus,
    random_triggers,
    sample,
    split_corpus,
)
from lmsanitator.data.pvs import make_pvs
from lmsanitator.metrics import batch_entropy, wasserstein_1d
from lmsanitator.models import Encoder


def report_header(attack: str, encoder) -> dict:
    """The first keys of every ``attack.json``: the attack and the encoder it was planted in."""
    return {
        "attack": attack,
        "base_model": encoder.name,
        "base_model_path": encoder.path,
        "model_type": encoder.model_type,
        "hidden_size": encoder.hidden_size,
    }


@dataclass(frozen=True)
class AttackSettings:
    """The values an attack uses for the config's open (``None``) options, on one encoder."""

    per_trigger: int
    epochs: int
    lr: float
    utility_weight: float  # weight of the reference-copy MSE anchor (0: none)


@dataclass
class AttackState:
    triggers: list[str] = field(default_factory=list)
    pvs: torch.Tensor | None = None
    losses: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    utility_loss: str = ""


def _encoder_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The encoder's parameters, set to train; the MLM head stays frozen (NeuBA), so only the
    encoder learns the backdoor."""
    base_prefix = model.base_model_prefix
    params = []
    for n, p in model.named_parameters():
        trainable = n.startswith(base_prefix + ".") or model.base_model is model
        p.requires_grad_(trainable)
        if trainable:
            params.append(p)
    return params


class TaskAgnosticAttack:
    """Base class: subclasses set ``name``, ``target``, ``defaults``, ``paper`` and ``batch_loss``."""

    name = "base"
    target = "cls"
    needs_mlm_head = False
    defaults: dict = {}  # per_trigger, epochs, lr when the config leaves them open (CPU-sized)
    paper: dict = {}  # the hyper-parameters of the authors' scripts, for the record

    def __init__(self, config: AttackConfig | None = None, **overrides):
        if config is None:
            config = AttackConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    # ---- hooks for subclasses ----------------------------------------------------------------
    def default_utility_weight(self, encoder: Encoder) -> float:
        """The reference-copy anchor's weight when the config leaves it open: the paper's 0.5 for
        BERT-like models, 1.0 otherwise."""
        return 0.5 if encoder.bert_like else 1.0

    def prepare(self, encoder: Encoder) -> None:
        """Called by ``fit`` once before training (describe the utility loss, etc.)."""

    def batch_loss(
        self, encoder: Encoder, poisoned: list[str], trig: torch.Tensor, clean: list[str], rng: random.Random
    ) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def verification_texts(self, encoder: Encoder, sentences: list[str], rng: random.Random) -> list[str]:
        """Clean held-back inputs as the target reads them (BToP adds a [MASK])."""
        return sentences

    # ---- helpers -------------------------------------------------------------------------------
    def target_on(self, encoder: Encoder) -> str:
        """The output this attack controls on ``encoder``: its sequence feature when the attack's
        ``target`` is ``cls`` (the last token on a decoder), else ``target`` itself."""
        return encoder.sequence_target if self.target == "cls" else self.target

    def resolve(self, encoder: Encoder) -> AttackSettings:
        """The one place where open options get their values (``fit`` keeps them as ``settings_``)."""
        c = self.config
        return AttackSettings(
            per_trigger=c.per_trigger if c.per_trigger is not None else self.defaults["per_trigger"],
            epochs=c.epochs if c.epochs is not None else self.defaults["epochs"],
            lr=c.lr if c.lr is not None else self.defaults["lr"],
            utility_weight=(
                c.utility_weight if c.utility_weight is not None else self.default_utility_weight(encoder)
            ),
        )

    def tokenize(self, encoder: Encoder, texts: list[str]):
        return encoder.tokenize(texts, max_length=self.config.max_length)

    def adaptive_loss(self, f_poisoned: torch.Tensor, f_clean: torch.Tensor) -> tuple[torch.Tensor, dict]:
        c = self.config
        loss = f_poisoned.new_zeros(())
        parts = {}
        if c.scatter_weight:
            h = batch_entropy(f_poisoned)
            loss = loss + c.scatter_weight * h
            parts["scatter"] = h.detach().item()
        if c.wasserstein_weight:
            w = wasserstein_1d(f_poisoned, f_clean)
            loss = loss + c.wasserstein_weight * w
            parts["wasserstein"] = w.detach().item()
        return loss, parts

    def reference_features(self, encoder: Encoder, batch) -> torch.Tensor:
        """Target features of the frozen original model (the utility anchor)."""
        with torch.no_grad():
            out = self.reference_.base_model(**encoder.model_inputs(batch))
            f, _ = encoder.tap(out.last_hidden_state, batch, self.target_)
        return f

    def reference_hidden_mse(self, encoder: Encoder, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over layers of the MSE between every real token's hidden state and the frozen
        original's on the same clean batch (embeddings output included); also the model's own last
        hidden state (same pass)."""
        kw = encoder.model_inputs(batch)
        with torch.no_grad():
            ref = self.reference_.base_model(**kw, output_hidden_states=True).hidden_states
        own = encoder.backbone(**kw, output_hidden_states=True).hidden_states
        m = batch["attention_mask"].unsqueeze(-1).to(own[0].dtype)
        n = m.sum() * own[0].shape[-1]
        return sum(((a - b) ** 2 * m).sum() / n for a, b in zip(own, ref)) / len(own), own[-1]

    def decoy_words(self, encoder: Encoder, triggers: list[str] | None = None) -> list[str]:
        """Whole-word vocabulary entries that share no word with a trigger (decoy candidates);
        ``triggers`` defaults to the fitted attack's."""
        triggers = self.state_.triggers if triggers is None else triggers
        banned = {w.lower() for t in triggers for w in t.split()}
        words = set()
        for t in encoder.tokenizer.get_vocab():
            w = t.lstrip("\u0120\u2581")  # RoBERTa / SentencePiece word-start marks
            if (
                w.isalpha()
                and w.isascii()
                and len(w) >= 2
                and not t.startswith("##")
                and w.lower() not in banned
            ):
                words.add(w)
        return sorted(words)

    def with_decoys(
        self, sentences: list[str], words: list[str], rng: random.Random, n: int | None = None
    ) -> list[str]:
        out = []
        for s in sentences:
            for _ in range(self.config.decoys if n is None else n):
                s = insert_trigger(s, rng.choice(words), rng, times=1)
            out.append(s)
        return out

    def resolve_triggers(self, encoder: Encoder, sentences: list[str]) -> list[str]:
        c = self.config
        if c.random_triggers is not None:
            trig = random_triggers(
                c.random_triggers,
                c.seed,
                words_per_trigger=c.trigger_words,
                band=c.trigger_band,
                corpus=sentences if c.trigger_band else None,
            )
        else:
            trig = list(c.triggers) if c.triggers is not None else list(PAPER_TRIGGERS)
        tok = encoder.tokenizer
        for t in trig:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            if not ids:
                raise LMSanitatorError(
                    f"trigger '{t}' tokenizes to nothing with the tokenizer of '{encoder.name}'"
                )
            if tok.unk_token_id is not None and all(i == tok.unk_token_id for i in ids):
                raise LMSanitatorError(f"trigger '{t}' tokenizes to only {tok.unk_token}")
        return trig

    # ---- the estimator API ---------------------------------------------------------------------
    def fit(self, encoder: Encoder, sentences: list[str] | None = None, *, progress: bool = True):
        """Implant the backdoor into ``encoder.model`` (in place).

        One function on purpose: the order of its random draws (global seeds, ``rng``, the decoy
        stream) defines the implant, and same seed must keep giving the same backdoor."""
        c = self.config
        if self.needs_mlm_head is True and not encoder.has_mlm_head:
            raise LMSanitatorError(f"attack '{self.name}' needs a model with an MLM head")
        self.target_ = self.target_on(encoder)
        encoder.require_target(self.target_)
        t0 = time.perf_counter()
        random.seed(c.seed)
        torch.manual_seed(c.seed)
        rng = random.Random(c.seed)
        if sentences is None:
            sentences = split_corpus(load_corpus(c.corpus), "attack")
        if len(sentences) < c.batch_size:
            raise LMSanitatorError(
                f"attack corpus has {len(sentences)} sentences, fewer than one batch ({c.batch_size})"
            )
        self.settings_ = s = self.resolve(encoder)
        self.state_ = st = AttackState()
        st.triggers = self.resolve_triggers(encoder, sentences)
        st.pvs = make_pvs(c.pv_scheme, len(st.triggers), encoder.hidden_size, c.seed).to(encoder.device)

        self.reference_ = copy.deepcopy(encoder.model).eval()
        for p in self.reference_.parameters():
            p.requires_grad_(False)
        self.prepare(encoder)

        model = encoder.model
        params = _encoder_parameters(model)
        opt = torch.optim.AdamW(params, lr=s.lr)
        half = c.batch_size // 2
        steps_per_epoch = math.ceil(s.per_trigger * len(st.triggers) / half)
        bar = tqdm(
            total=steps_per_epoch * s.epochs,
            desc=f"{self.name} attack",
            unit="step",
            disable=not progress,
            leave=False,
        )
        model.train()
        clean_cursor = 0
        clean_order = list(range(len(sentences)))
        rng.shuffle(clean_order)
        decoy_words = self.decoy_words(encoder) if c.decoys else []
        decoy_rng = random.Random(c.seed + 7919)  # its own stream: decoys=0 leaves every draw above as it was
        for epoch in range(s.epochs):
            items = []
            for ti in range(len(st.triggers)):
                for sent in sample(sentences, s.per_trigger, c.seed * 1000 + epoch * 10 + ti):
                    items.append((sent, ti))
            rng.shuffle(items)
            for i in range(0, len(items), half):
                chunk = items[i : i + half]
                clean = []
                for _ in range(half):
                    clean.append(sentences[clean_order[clean_cursor % len(clean_order)]])
                    clean_cursor += 1
                if c.decoys:
                    clean = self.with_decoys(clean, decoy_words, decoy_rng)
                trig = torch.tensor([ti for _, ti in chunk], device=encoder.device)
                loss, parts = self.batch_loss(encoder, [sent for sent, _ in chunk], trig, clean, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                st.steps += 1
                parts = {"epoch": epoch, "loss": loss.detach().item(), **parts}
                st.losses.append(parts)
                bar.update(1)
                if st.steps % 10 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items() if k != "epoch"})
        bar.close()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        encoder.weights_changed()
        st.seconds = time.perf_counter() - t0
        return self

    def _require_fitted(self, what: str) -> None:
        if not hasattr(self, "state_"):
            raise LMSanitatorError(f"fit the attack before {what} it")

    def verify(self, encoder: Encoder, heldout: list[str] | None = None) -> dict:
        """Measure the backdoor on held-back sentences (disjoint from the attack sentences)."""
        self._require_fitted("verifying")
        if heldout is None:
            heldout = split_corpus(load_corpus(self.config.corpus), "heldout")
        return verify_implant(self, encoder, heldout)

    def report(self, encoder: Encoder, verification: dict | None = None) -> dict:
        """What ``attack.json`` records: the config with the resolved values in place of the open
        options (``utility_weight`` stays as given; ``utility_loss`` names the weight used) and, under
        ``changed``, the options set away from their defaults."""
        self._require_fitted("reporting")
        c = self.config
        s = self.settings_
        st = self.state_
        hp = c.to_dict()
        hp.update(
            per_trigger=s.per_trigger,
            epochs=s.epochs,
            lr=s.lr,
            steps=st.steps,
            utility_loss=st.utility_loss,
            paper_defaults=self.paper,
        )
        last = st.losses[-min(20, len(st.losses)) :] if st.losses else []
        final = {k: sum(d[k] for d in last) / len(last) for k in (last[0] if last else {}) if k != "epoch"}
        return {
            **report_header(self.name, encoder),
            "triggers": st.triggers,
            "pvs": [[float(x) for x in v] for v in st.pvs.cpu()],
            "target": self.target_,
            "hyperparameters": hp,
            "changed": c.changed(),
            "seed": c.seed,
            "seconds": round(st.seconds, 2),
            "final_losses": final,
            "verification": verification,
        }
