"""Settings of one downstream tuning run (validated on construction)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.tuning.methods import get_method


@dataclass
class TuneConfig:
    """Hyper-parameters of :class:`~lmsanitator.tuning.Tuner`.

    ``lr`` and ``prefix_len`` default per method (see :mod:`lmsanitator.tuning.methods`);
    ``max_length`` defaults to the task's (64 for the built-in sentence tasks, else 128);
    ``head_lr`` defaults to ``max(lr, 1e-3)`` (a fresh linear head needs a larger step than full
    fine-tuning's). The best epoch on the validation split is kept; ``patience`` stops early after
    that many epochs without improvement.
    """

    method: str
    epochs: int = 3
    lr: float | None = None
    head_lr: float | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    prefix_len: int | None = None
    max_length: int | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    head_dropout: float = 0.1
    prompt_encoder_hidden: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.06
    patience: int | None = None
    keep: str = (
        "best"  # "best": the best validation epoch; "last": the last epoch (random-label PSIM training)
    )
    use_verbalizer: bool = True  # p-tuning: read [MASK] through the MLM head when the model has one
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        m = get_method(self.method)
        if self.lr is None:
            self.lr = m.lr
        if self.prefix_len is None:
            self.prefix_len = m.prefix_len
        if self.head_lr is None:
            self.head_lr = max(self.lr, 1e-3)
        _int(self.epochs, "epochs", 1)
        _int(self.batch_size, "batch size", 1)
        _int(self.eval_batch_size, "eval batch size", 1)
        _int(self.lora_r, "lora r", 1)
        _int(self.lora_alpha, "lora alpha", 1)
        _int(self.prompt_encoder_hidden, "prompt encoder hidden size", 1)
        _int(self.seed, "seed", 0)
        if m.prefix_len is not None:
            _int(self.prefix_len, "prefix length", 1)
        if self.max_length is not None:
            _int(self.max_length, "max length", 8)
        if self.patience is not None:
            _int(self.patience, "patience", 1)
        if self.keep not in ("best", "last"):
            raise LMSanitatorError(f"keep must be 'best' or 'last', got {self.keep!r}")
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TuneConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _int(v, name: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise LMSanitatorError(f"{name} must be an integer >= {lo}, got {v!r}")
