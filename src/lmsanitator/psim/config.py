"""PSIM's settings (:class:`PSIMConfig`) and its training-set helpers (label reset, step budget)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from lmsanitator.core.config import Config
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.psim.calibration import DEFAULT_FRR
from lmsanitator.tuning import METHODS, TuneConfig

HeadInit = Literal["auto", "model", "probe", "random"]
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)
# the parameter-efficient methods of lmsanitator.tuning (PSIMConfig also takes one registered later)
PSIMMethod = Literal["p-tuning", "p-tuning-v2", "prompt-tuning", "lora"]


def reset_labels(examples, num_labels: int, seed: int) -> list:
    """The same examples with labels drawn uniformly from 0..K-1 (seeded)."""
    rng = random.Random(f"psim-labels:{seed}")
    return [replace(e, label=rng.randrange(num_labels)) for e in examples]


def budget(examples, n: int | None, seed: int) -> list:
    """At most ``n`` of the examples, drawn at random (seeded); all of them when ``n`` is None."""
    examples = list(examples)
    if n is None or len(examples) <= n:
        return examples
    return random.Random(f"psim-budget:{seed}").sample(examples, n)


@dataclass
class PSIMConfig(Config):
    """Settings of PSIM training (paper: P-tuning, 5 virtual tokens, prompt-encoder hidden 128, 1
    epoch, AdamW lr 2e-5, batch 32, linear schedule, 6% warm-up, gamma 0.7).

    Defaults, and why (measured in ``benchmarks/psim_results.md``, issue 23):

    * ``method`` LoRA: the paper's P-tuning classifies from the pooled [CLS] of the poisoned
      sequence classifier; our P-tuning reads [MASK] (LMSanitator's convention), where the backdoor
      is weaker, and cannot reuse the attacker's head.
    * ``head_lr`` 1e-3, the head trained (0 freezes it): measured, a frozen head is *worse* - the
      adapter then does all the flattening and rewrites the trigger's path with it (flagged at 1%
      FRR: 31% frozen vs 82% trained over 188 steps; clean p99 0.958 vs 0.844 over 32 steps). With
      gamma calibrated on clean inputs, the head shrinking (which scales every logit alike) costs
      nothing; what it learns on random labels moves away from the clean inputs' directions, not
      the trigger's.
    * ``train_examples`` 1000 (32 steps at batch 32): a step budget independent of the training
      set's size - the cause of the collapse in issue 23. Random-label training wears the backdoor
      down step by step: on one BadNet model, 32 steps flag 100% of the triggered inputs at 1% FRR,
      188 steps (6000 examples, one epoch) 82% with the poisoned confidences down to 0.56 median.
    * ``gamma`` unset: the clean validation confidence at false-rejection rate ``frr`` (1%), see
      :mod:`lmsanitator.psim.calibration`; the paper's fixed 0.7 is only the fallback.
    """

    method: PSIMMethod = field(
        default="lora",
        metadata={
            "help": "parameter-efficient method of the module (default lora: our p-tuning reads [MASK], "
            "not the [CLS] a poisoned classifier was trained on)"
        },
    )
    epochs: int = field(
        default=1, metadata={"help": "passes over the (budgeted) randomly relabelled examples"}
    )
    train_examples: int | None = field(
        default=1000,
        metadata={
            "help": "step budget: at most this many training examples, drawn at random, whatever the "
            "training set's size (None: all of them; longer training flattens the backdoor too)"
        },
    )
    lr: float | None = field(
        default=None, metadata={"help": "module (adapter) learning rate (default: the method's)"}
    )
    head_lr: float | None = field(
        default=1e-3,
        metadata={"help": "learning rate of the linear head (0: frozen; None: the method's)"},
    )
    head_init: HeadInit = field(
        default="auto",
        metadata={
            "help": "auto: the attacker's classifier.safetensors in the model folder if any, else a "
            "linear probe on the true labels; model; probe; random"
        },
    )
    prefix_len: int | None = field(default=None, metadata={"help": "virtual tokens (default per method)"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    max_length: int | None = field(default=None, metadata={"help": "tokens per input (default: the task's)"})
    gamma: float | None = field(
        default=None,
        metadata={
            "help": "flagging threshold on the max softmax probability (default: calibrated on the "
            "clean validation inputs at false-rejection rate frr)"
        },
    )
    frr: float = field(
        default=DEFAULT_FRR,
        metadata={"help": "false-rejection rate of the default gamma, on clean validation inputs"},
    )
    probe_steps: int = field(
        default=200, metadata={"help": "Adam steps of the linear probe that initialises the head (0: none)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the label reset and of the training"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda[:N]"})

    @classmethod
    def _hints(cls) -> dict:
        # any registered parameter-efficient method is an option, one registered after import too
        peft = tuple(name for name, m in METHODS.items() if m.peft_type is not None)
        return {**super()._hints(), "method": Literal[peft]}

    def check(self) -> None:
        if self.gamma is not None and not 0.0 < self.gamma < 1.0:
            raise LMSanitatorError(f"gamma must be in (0, 1), got {self.gamma}")
        if not isinstance(self.frr, (int, float)) or isinstance(self.frr, bool) or not 0.0 <= self.frr < 1.0:
            raise LMSanitatorError(f"false-rejection rate must be in [0, 1), got {self.frr!r}")
        for name, v, lo in (("probe steps", self.probe_steps, 0), ("train examples", self.train_examples, 1)):
            if v is None and name == "train examples":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise LMSanitatorError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.head_lr is not None and (
            not isinstance(self.head_lr, (int, float)) or not math.isfinite(self.head_lr) or self.head_lr < 0
        ):
            raise LMSanitatorError(f"head lr must be >= 0 (0: frozen head), got {self.head_lr!r}")
        self.tune_config()  # TuneConfig validates the rest

    @property
    def head_frozen(self) -> bool:
        return self.head_lr == 0

    def tune_config(self) -> TuneConfig:
        return TuneConfig(
            method=self.method,
            epochs=self.epochs,
            lr=self.lr,
            head_lr=None if self.head_frozen else self.head_lr,  # a frozen head gets no optimizer group
            batch_size=self.batch_size,
            prefix_len=self.prefix_len,
            max_length=self.max_length,
            keep="last",
            seed=self.seed,
            device=self.device,
        )
