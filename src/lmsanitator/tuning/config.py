"""Settings of one downstream tuning run (validated on construction)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lmsanitator.core.config import Config
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.tuning.methods import METHODS, MethodName, get_method

# a fresh linear head needs a larger step than full fine-tuning's: head_lr defaults to max(lr, this)
MIN_HEAD_LR = 1e-3


@dataclass
class TuneConfig(Config):
    """Hyper-parameters of :class:`~lmsanitator.tuning.Tuner`.

    ``lr`` and ``prefix_len`` default per method (see :mod:`lmsanitator.tuning.methods`);
    ``max_length`` defaults to the task's (64 for the built-in sentence tasks, else 128);
    ``head_lr`` defaults to ``max(lr, 1e-3)``. The per-method defaults are resolved on
    construction (:meth:`method_defaults`), the task's in :meth:`for_task`; :meth:`changed` still
    names only what was set away from those defaults. The best epoch on the validation split is
    kept; ``patience`` stops early after that many epochs without improvement.
    """

    method: MethodName = field(
        metadata={"help": "downstream tuning method: p-tuning, p-tuning-v2, prompt-tuning, lora or full"}
    )
    epochs: int = field(default=3, metadata={"help": "training epochs (the best validation epoch is kept)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default per method)"})
    head_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the linear head (default max(lr, 1e-3))"}
    )
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    eval_batch_size: int = field(default=64, metadata={"help": "batch size of evaluation and prediction"})
    prefix_len: int | None = field(
        default=None,
        metadata={
            "help": "virtual tokens (default per method: p-tuning 8, p-tuning-v2 16, prompt-tuning 20)"
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per input (default: the task's, 64 or 128)"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout inside the LoRA modules"})
    head_dropout: float = field(default=0.1, metadata={"help": "dropout in front of the linear head"})
    prompt_encoder_hidden: int = field(
        default=128, metadata={"help": "hidden size of P-tuning's prompt encoder (MLP)"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup: float = field(default=0.06, metadata={"help": "fraction of the steps with linear warm-up"})
    patience: int | None = field(
        default=None, metadata={"help": "stop after this many epochs without validation gain"}
    )
    keep: Literal["best", "last"] = field(
        default="best",
        metadata={
            "help": "best: the best validation epoch; last: the last epoch (random-label PSIM training)"
        },
    )
    use_verbalizer: bool = field(
        default=True, metadata={"help": "p-tuning: read [MASK] through the MLM head when the model has one"}
    )
    seed: int = field(default=0, metadata={"help": "random seed (initialisation and batch order)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda[:N] or mps"})

    def __post_init__(self) -> None:
        # the one place a None default of lr, head_lr or prefix_len becomes the method's value
        # (an unknown method is refused here, before anything reads it)
        for name, value in self.method_defaults().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__()

    @classmethod
    def _hints(cls) -> dict:
        # a method registered after import (register_method) is an option as well
        return {**super()._hints(), "method": Literal[tuple(METHODS)]}

    def method_defaults(self) -> dict[str, Any]:
        """What ``lr``, ``prefix_len`` and ``head_lr`` are when left unset, for this method."""
        m = get_method(self.method)
        lr = m.lr if self.lr is None else self.lr
        number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
        # a bad lr has no head_lr default; check() then names the lr
        return {"lr": m.lr, "prefix_len": m.prefix_len, "head_lr": max(lr, MIN_HEAD_LR) if number else None}

    def for_task(self, max_length: int) -> TuneConfig:
        """This config with ``max_length`` set to the task's when left unset (self stays as it is)."""
        if self.max_length is not None:
            return self
        return dataclasses.replace(self, max_length=max_length)

    def changed(self) -> list[str]:
        """Fields set away from their default; a per-method default (``lr``, ``prefix_len``,
        ``head_lr``) counts as a default. ``max_length`` filled in by :meth:`for_task` counts as
        changed, so ask the caller's config, before :meth:`for_task`."""
        resolved = self.method_defaults()
        return [n for n in super().changed() if n not in resolved or getattr(self, n) != resolved[n]]

    def check(self) -> None:
        _int(self.epochs, "epochs", 1)
        _int(self.batch_size, "batch size", 1)
        _int(self.eval_batch_size, "eval batch size", 1)
        _int(self.lora_r, "lora r", 1)
        _int(self.lora_alpha, "lora alpha", 1)
        _int(self.prompt_encoder_hidden, "prompt encoder hidden size", 1)
        _int(self.seed, "seed", 0)
        if get_method(self.method).prefix_len is not None:
            _int(self.prefix_len, "prefix length", 1)
        if self.max_length is not None:
            _int(self.max_length, "max length", 8)
        if self.patience is not None:
            _int(self.patience, "patience", 1)
        for name in ("lr", "head_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise LMSanitatorError(f"{name.replace('_', ' ')} must be a positive number, got {v!r}")
        for name in ("lora_dropout", "head_dropout", "warmup"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise LMSanitatorError(f"{name.replace('_', ' ')} must be in [0, 1), got {v!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise LMSanitatorError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise LMSanitatorError(f"unknown device '{self.device}': use cpu or cuda[:N]")


def _int(v, name: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise LMSanitatorError(f"{name} must be an integer >= {lo}, got {v!r}")
