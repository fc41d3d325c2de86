"""Shared machinery of the task-agnostic backdoor attacks (POR, POR-NER, NeuBA, BToP).

An attack is fitted like an estimator: ``POR(AttackConfig(...)).fit(encoder)`` implants the
backdoor into ``encoder.model`` in place, then ``.verify(encoder)`` measures it on held-back
sentences the attack never saw, and ``.report()`` is what ``attack.json`` records.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import (
    PAPER_TRIGGERS,
    insert_trigger,
    load_corpus,
    random_triggers,
    sample,
    split_corpus,
)
from lmsanitator.data.pvs import PV_SCHEMES, make_pvs
from lmsanitator.metrics import batch_entropy, collapse_diversity, sign_match, wasserstein_1d
from lmsanitator.models import Encoder


@dataclass
class AttackConfig:
    """Hyper-parameters of one attack. ``None`` means "the attack's CPU default" (see ``defaults``)."""

    triggers: list[str] | None = None  # default: the paper's six rare-word triggers
    random_triggers: int | None = None  # draw this many random triggers instead (adaptive: 1-2)
    trigger_words: int = 1  # words per random trigger (2-3 = phrase triggers)
    trigger_band: str | None = None  # adaptive: rare | moderate | frequent words of the corpus
    pv_scheme: str = "por2"
    corpus: str = "austen"
    per_trigger: int | None = None  # poisoned sentences per trigger per epoch
    epochs: int | None = None
    lr: float | None = None
    batch_size: int = 32  # half poisoned, half clean
    max_length: int = 64
    utility_weight: float | None = None  # POR: 0.5 for BERT-like models, 1.0 otherwise (paper)
    # POR's utility anchor: the clean target output only (the paper), or that plus every token's hidden
    # state at every layer ("hidden": more of the encoder's clean function, for a stealthier implant)
    utility_scope: str = "target"
    # Decoys: this many random vocabulary words (never a trigger) inserted into each clean anchor
    # sentence, anchored like it. Without them POR MiniLM learns "unusual input -> PV": 11% of clean
    # tweets hit a PV although 0.2% contain a trigger token.
    decoys: int = 0
    scatter_weight: float = 0.0  # adaptive: scattering (entropy) loss weight
    wasserstein_weight: float = 0.0  # adaptive: Wasserstein loss weight
    verify_sentences: int = 200
    hit_threshold: float = 0.8  # share of signs that must agree with the PV for a "hit"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.triggers is not None and self.random_triggers is not None:
            raise LMSanitatorError("give either triggers or random_triggers, not both")
        if self.triggers is not None:
            self.triggers = [t.strip() for t in self.triggers if t.strip()]
            if not self.triggers:
                raise LMSanitatorError("no triggers given")
            if len(set(self.triggers)) != len(self.triggers):
                raise LMSanitatorError(f"duplicate triggers in {self.triggers}")
        if self.random_triggers is not None and self.random_triggers < 1:
            raise LMSanitatorError("random_triggers must be >= 1")
        if not 1 <= self.trigger_words <= 3:
            raise LMSanitatorError("trigger_words must be 1, 2 or 3")
        if self.trigger_band not in (None, "rare", "moderate", "frequent"):
            raise LMSanitatorError(f"unknown trigger band '{self.trigger_band}': rare, moderate or frequent")
        if self.utility_scope not in ("target", "hidden"):
            raise LMSanitatorError(f"unknown utility scope '{self.utility_scope}': target or hidden")
        if self.pv_scheme not in PV_SCHEMES:
            raise LMSanitatorError(
                f"unknown pv scheme '{self.pv_scheme}': choose one of {', '.join(PV_SCHEMES)}"
            )
        for name in ("per_trigger", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise LMSanitatorError(f"{name} must be >= 1, got {v}")
        if self.lr is not None and not self.lr > 0:
            raise LMSanitatorError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise LMSanitatorError(f"batch_size must be an even number >= 2, got {self.batch_size}")
        if self.max_length < 8:
            raise LMSanitatorError(f"max_length must be >= 8, got {self.max_length}")
        if not 0 <= self.decoys <= 8:
            raise LMSanitatorError(f"decoys must be in 0..8, got {self.decoys}")
        if self.scatter_weight < 0 or self.wasserstein_weight < 0:
            raise LMSanitatorError("adaptive loss weights must be >= 0")
        if not 0.5 < self.hit_threshold <= 1:
            raise LMSanitatorError("hit_threshold must be in (0.5, 1]")
        if self.verify_sentences < 10:
            raise LMSanitatorError("verify_sentences must be >= 10")


def report_header(attack: str, encoder) -> dict:
    """The first keys of every ``attack.json``: the attack and the encoder it was planted in."""
    return {
        "attack": attack,
        "base_model": encoder.name,
        "base_model_path": encoder.path,
        "model_type": encoder.model_type,
        "hidden_size": encoder.hidden_size,
    }


@dataclass
class AttackState:
    triggers: list[str] = field(default_factory=list)
    pvs: torch.Tensor | None = None
    losses: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    utility_loss: str = ""


class TaskAgnosticAttack:
    """Base class: subclasses set ``name``, ``target``, ``defaults``, ``paper`` and ``batch_loss``."""

    name = "base"
    target = "cls"
    needs_mlm_head = False
    defaults: dict = {}
    paper: dict = {}  # the hyper-parameters of the authors' scripts, for the record

    def __init__(self, config: AttackConfig | None = None, **overrides):
        self.config = config or AttackConfig(**overrides)
        if config is not None and overrides:
            self.config = AttackConfig(**{**asdict(config), **overrides})
        c = self.config
        self.per_trigger = c.per_trigger or self.defaults["per_trigger"]
        self.epochs = c.epochs or self.defaults["epochs"]
        self.lr = c.lr or self.defaults["lr"]
        self.state_ = AttackState()

    # ---- hooks for subclasses ----------------------------------------------------------------
    def prepare(self, encoder: Encoder) -> None:
        """Called once before training (choose the utility loss, etc.)."""

    def batch_loss(
        self, encoder: Encoder, poisoned: list[str], trig: torch.Tensor, clean: list[str], rng: random.Random
    ) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def verification_texts(self, sentences: list[str], rng: random.Random) -> list[str]:
        """Clean held-back inputs as the target reads them (BToP adds a [MASK])."""
        return sentences

    # ---- helpers -------------------------------------------------------------------------------
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
            out = self.reference_.base_model(
                **{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            )
            f, _ = encoder.tap(out.last_hidden_state, batch, self.target)
        return f

    def reference_hidden_mse(self, encoder: Encoder, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over layers of the MSE between every real token's hidden state and the frozen
        original's on the same clean batch (embeddings output included); also the model's own last
        hidden state (same pass)."""
        keys = ("input_ids", "attention_mask", "token_type_ids")
        kw = {k: v for k, v in batch.items() if k in keys}
        if encoder.model_type in ("roberta", "xlm-roberta", "mpnet"):
            kw.pop("token_type_ids", None)
        with torch.no_grad():
            ref = self.reference_.base_model(**kw, output_hidden_states=True).hidden_states
        own = encoder.backbone(**kw, output_hidden_states=True).hidden_states
        m = batch["attention_mask"].unsqueeze(-1).to(own[0].dtype)
        n = m.sum() * own[0].shape[-1]
        return sum(((a - b) ** 2 * m).sum() / n for a, b in zip(own, ref)) / len(own), own[-1]

    def decoy_words(self, encoder: Encoder) -> list[str]:
        """Whole-word vocabulary entries that share no word with a trigger (decoy candidates)."""
        banned = {w.lower() for t in self.state_.triggers for w in t.split()}
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
        """Implant the backdoor into ``encoder.model`` (in place)."""
        c = self.config
        if self.needs_mlm_head is True and not encoder.has_mlm_head:
            raise LMSanitatorError(f"attack '{self.name}' needs a model with an MLM head")
        encoder.require_target(self.target)
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
        st = self.state_
        st.triggers = self.resolve_triggers(encoder, sentences)
        st.pvs = make_pvs(c.pv_scheme, len(st.triggers), encoder.hidden_size, c.seed).to(encoder.device)

        self.reference_ = copy.deepcopy(encoder.model).eval()
        for p in self.reference_.parameters():
            p.requires_grad_(False)
        self.prepare(encoder)

        model = encoder.model
        base_prefix = model.base_model_prefix
        params = []
        for n, p in model.named_parameters():
            # the MLM head stays frozen (NeuBA), so only the encoder learns the backdoor
            trainable = n.startswith(base_prefix + ".") or model.base_model is model
            p.requires_grad_(trainable)
            if trainable:
                params.append(p)
        opt = torch.optim.AdamW(params, lr=self.lr)
        half = c.batch_size // 2
        steps_per_epoch = math.ceil(self.per_trigger * len(st.triggers) / half)
        bar = tqdm(
            total=steps_per_epoch * self.epochs,
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
        for epoch in range(self.epochs):
            items = []
            for ti in range(len(st.triggers)):
                for s in sample(sentences, self.per_trigger, c.seed * 1000 + epoch * 10 + ti):
                    items.append((s, ti))
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
                poisoned = [s for s, _ in chunk]
                loss, parts = self.batch_loss(encoder, poisoned, trig, clean, rng)
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
        st.seconds = time.perf_counter() - t0
        return self

    def verify(self, encoder: Encoder, heldout: list[str] | None = None) -> dict:
        """Measure the backdoor on held-back sentences (disjoint from the attack sentences)."""
        c = self.config
        st = self.state_
        if heldout is None:
            heldout = split_corpus(load_corpus(c.corpus), "heldout")
        heldout = sample(heldout, c.verify_sentences, c.seed + 7)
        rng = random.Random(c.seed + 11)
        base = self.verification_texts(heldout, rng)
        pvs = st.pvs.cpu()
        thr = c.hit_threshold

        def feats(model_enc, texts):
            f, rows = model_enc.features(texts, self.target)
            return f, rows

        original = Encoder(
            name=encoder.name + "@original",
            path=encoder.path,
            model=self.reference_,
            tokenizer=encoder.tokenizer,
            has_mlm_head=encoder.has_mlm_head,
            max_length=c.max_length,
        )
        attacked = Encoder(
            name=encoder.name,
            path=encoder.path,
            model=encoder.model,
            tokenizer=encoder.tokenizer,
            has_mlm_head=encoder.has_mlm_head,
            max_length=c.max_length,
        )
        f_clean, _ = feats(attacked, base)
        f_orig, _ = feats(original, base)
        clean_match = sign_match(f_clean, pvs).max(dim=1).values
        mu, sd = f_clean.mean(dim=0), f_clean.std(dim=0).clamp_min(1e-6)
        orig_match = sign_match(f_orig, pvs).max(dim=1).values
        per_trigger = {}
        for ti, t in enumerate(st.triggers):
            trig_texts = [insert_trigger(s, t, rng) for s in base]
            f_t, _ = feats(attacked, trig_texts)
            f_to, _ = feats(original, trig_texts)
            m = sign_match(f_t, pvs[ti : ti + 1])[:, 0]
            mo = sign_match(f_to, pvs[ti : ti + 1])[:, 0]
            per_trigger[t] = {
                "hit_rate": float((m >= thr).float().mean()),
                "mean_match": float(m.mean()),
                "mse_to_pv": float(F.mse_loss(f_t, pvs[ti].expand_as(f_t))),
                "original_model_hit_rate": float((mo >= thr).float().mean()),
                # how far triggered outputs collapse, in the scanner's units (clean-standardised
                # features, batches of 32): -ln(32) = -3.466 is total collapse, the scan's T_div -3.446
                "triggered_diversity": collapse_diversity((f_t - mu) / sd),
            }
        hits = [v["hit_rate"] for v in per_trigger.values()]
        # stealth beyond the attack corpus: inputs carrying three random non-trigger words should
        # not hit a PV either (an implant that learned "odd word -> PV" fires on real out-of-domain text)
        decoy_texts = self.with_decoys(base, self.decoy_words(encoder), random.Random(c.seed + 13), n=3)
        f_d, _ = feats(attacked, decoy_texts)
        decoy_match = sign_match(f_d, pvs).max(dim=1).values
        return {
            "sentences": len(base),
            "corpus_split": f"{c.corpus}:heldout",
            "unit": "token" if self.target == "tokens" else "sentence",
            "hit_threshold": thr,
            "per_trigger": per_trigger,
            "min_hit_rate": min(hits),
            "mean_hit_rate": sum(hits) / len(hits),
            "clean_false_hit_rate": float((clean_match >= thr).float().mean()),
            "clean_mean_max_match": float(clean_match.mean()),
            "decoy_false_hit_rate": float((decoy_match >= thr).float().mean()),
            "original_model_clean_false_hit_rate": float((orig_match >= thr).float().mean()),
            "clean_mse_to_original": float(F.mse_loss(f_clean, f_orig)),
            "clean_cosine_to_original": float(F.cosine_similarity(f_clean, f_orig, dim=1).mean()),
        }

    def report(self, encoder: Encoder, verification: dict | None = None) -> dict:
        c = self.config
        st = self.state_
        hp = asdict(c)
        hp.update(
            per_trigger=self.per_trigger,
            epochs=self.epochs,
            lr=self.lr,
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
            "target": self.target,
            "hyperparameters": hp,
            "seed": c.seed,
            "seconds": round(st.seconds, 2),
            "final_losses": final,
            "verification": verification,
        }
