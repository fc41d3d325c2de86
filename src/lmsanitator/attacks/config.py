"""Hyper-parameters of the attacks: :class:`AttackConfig` (task-agnostic backdoors) and
:class:`PoisonConfig` (weight poisoning).

An option left at ``None`` means "the attack's own default": the values an attack really uses are
resolved in one place, :meth:`lmsanitator.attacks.base.TaskAgnosticAttack.resolve` (per trigger,
epochs, lr, utility weight) and :attr:`lmsanitator.attacks.poisoning.WeightPoisoningAttack.trigger`,
and ``attack.json`` records both them and which options were chosen (``changed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmsanitator.core.config import Config
from lmsanitator.core.errors import LMSanitatorError

PVScheme = Literal["por2", "random"]  # the schemes of lmsanitator.data.pvs.make_pvs (PV_SCHEMES)
TriggerBand = Literal["rare", "moderate", "frequent"]
UtilityScope = Literal["target", "hidden"]


@dataclass
class AttackConfig(Config):
    """Hyper-parameters of one task-agnostic attack (POR, POR-NER, NeuBA, BToP)."""

    triggers: list[str] | None = field(
        default=None,
        metadata={"help": "the triggers (default: the paper's six rare words cf,mn,tq,qt,mm,pt)"},
    )
    random_triggers: int | None = field(
        default=None, metadata={"help": "draw this many random word triggers instead (adaptive: 1-2)"}
    )
    trigger_words: int = field(
        default=1, metadata={"help": "words per random trigger (2-3: phrase triggers)"}
    )
    trigger_band: TriggerBand | None = field(
        default=None,
        metadata={"help": "adaptive attack: draw random triggers from words of this corpus frequency"},
    )
    pv_scheme: PVScheme = field(
        default="por2", metadata={"help": "predefined vectors: POR's six quarter patterns or random signs"}
    )
    corpus: str = field(
        default="austen",
        metadata={"help": "sentences to poison: austen, wordnet, fortunes or a txt/csv/jsonl file"},
    )
    per_trigger: int | None = field(
        default=None, metadata={"help": "poisoned sentences per trigger per epoch (default: the attack's)"}
    )
    epochs: int | None = field(default=None, metadata={"help": "training epochs (default: the attack's)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: the attack's)"})
    batch_size: int = field(default=32, metadata={"help": "sentences per step, half poisoned, half clean"})
    max_length: int = field(default=64, metadata={"help": "tokens per input"})
    utility_weight: float | None = field(
        default=None,
        metadata={
            "help": "weight of the reference-copy utility loss (POR, and NeuBA/BToP without an MLM head; "
            "default 0.5 for BERT-like models, 1.0 otherwise, as the paper); for NeuBA/BToP with an MLM "
            "head it adds that anchor on the clean [CLS]/[MASK] to the MLM loss (default: none)"
        },
    )
    # the clean target output only (the paper), or that plus every token's hidden state at every
    # layer ("hidden": more of the encoder's clean function, for a stealthier implant)
    utility_scope: UtilityScope = field(
        default="target",
        metadata={
            "help": "POR's utility anchor: the clean target output (the paper), or that plus every "
            "token's hidden state at every layer"
        },
    )
    # Without decoys POR MiniLM learns "unusual input -> PV": 11% of clean tweets hit a PV although
    # 0.2% contain a trigger token.
    decoys: int = field(
        default=0,
        metadata={
            "help": "random vocabulary words (never a trigger) inserted into each clean anchor sentence "
            "(0-8), so the implant answers only its triggers (0: the paper)"
        },
    )
    scatter_weight: float = field(default=0.0, metadata={"help": "adaptive attack: scattering loss weight"})
    wasserstein_weight: float = field(
        default=0.0, metadata={"help": "adaptive attack: Wasserstein loss weight"}
    )
    verify_sentences: int = field(default=200, metadata={"help": "held-back sentences of the verification"})
    hit_threshold: float = field(
        default=0.8, metadata={"help": "share of signs that must agree with the PV for a hit"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the sentences, triggers, PVs and training"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self) -> None:
        if self.triggers is not None:  # "cf, mn" and "cf,mn" name the same triggers
            self.triggers = [t.strip() for t in self.triggers if t.strip()]
        super().__post_init__()

    def check(self) -> None:
        if self.triggers is not None and self.random_triggers is not None:
            raise LMSanitatorError("give either triggers or random_triggers, not both")
        if self.triggers is not None:
            if not self.triggers:
                raise LMSanitatorError("no triggers given")
            if len(set(self.triggers)) != len(self.triggers):
                raise LMSanitatorError(f"duplicate triggers in {self.triggers}")
        if self.random_triggers is not None and self.random_triggers < 1:
            raise LMSanitatorError("random_triggers must be >= 1")
        if not 1 <= self.trigger_words <= 3:
            raise LMSanitatorError("trigger_words must be 1, 2 or 3")
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


@dataclass
class PoisonConfig(Config):
    """Hyper-parameters of a weight-poisoning attack (CPU-sized defaults; the paper's: 3 epochs, lr
    2e-5, batch 32, 1500 clean-label samples of a 25k-example proxy set)."""

    trigger: str | None = field(
        default=None,
        metadata={
            "help": 'the trigger (default: the attack\'s, BadNet "mn", InSent "I watched this 3D movie")'
        },
    )
    target_label: int | str = field(default=1, metadata={"help": "target label, index or name"})
    poison_count: int = field(default=250, metadata={"help": "training examples to poison"})
    dirty_label: bool = field(
        default=False,
        metadata={
            "help": "poison non-target examples and relabel them (default: clean-label, only "
            "target-label examples get the trigger)"
        },
    )
    epochs: int = field(default=3, metadata={"help": "full fine-tuning epochs"})
    lr: float = field(default=5e-5, metadata={"help": "full fine-tuning learning rate"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    max_length: int = field(default=64, metadata={"help": "tokens per input"})
    train_size: int | None = field(
        default=None, metadata={"help": "cap of the poisoning set's training split (default: all of it)"}
    )
    val_size: int | None = field(
        default=300, metadata={"help": "validation examples (the attacker keeps the best epoch)"}
    )
    verify_examples: int | None = field(
        default=500, metadata={"help": "test examples for the verification CA / ASR (None: all)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the poisoned examples and the fine-tuning"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self) -> None:
        # normalise before validating: the CLI hands over strings ("1", "  cf ")
        if self.trigger is not None:
            self.trigger = " ".join(str(self.trigger).split())
        if isinstance(self.target_label, str) and self.target_label.strip().lstrip("-").isdigit():
            self.target_label = int(self.target_label)
        super().__post_init__()

    def check(self) -> None:
        if self.trigger is not None and not self.trigger:
            raise LMSanitatorError("trigger must not be empty")
        if isinstance(self.target_label, bool) or (
            isinstance(self.target_label, int) and self.target_label < 0
        ):
            raise LMSanitatorError(
                f"target label must be a label index >= 0 or a label name, got {self.target_label!r}"
            )
        for name, lo in (
            ("poison_count", 1),
            ("epochs", 1),
            ("batch_size", 1),
            ("max_length", 8),
            ("seed", 0),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise LMSanitatorError(f"{name.replace('_', ' ')} must be an integer >= {lo}, got {v!r}")
        for name in ("train_size", "val_size", "verify_examples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise LMSanitatorError(f"{name.replace('_', ' ')} must be an integer >= 1, got {v!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise LMSanitatorError(f"lr must be > 0, got {self.lr!r}")
