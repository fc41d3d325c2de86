"""PSIM, the Poisoned Sample Identification Module (Zhao et al., "Defending Against Weight-Poisoning
Backdoor Attacks for Parameter-Efficient Fine-Tuning").

A PEFT module on the (possibly poisoned) encoder, trained on the task's training set with every
label reset uniformly at random over all K classes. It cannot learn the task, so it stays unsure
on clean inputs, while a weight-poisoning backdoor keeps its extreme confidence on triggered ones:
an input whose max softmax probability exceeds ``gamma`` is flagged as poisoned and rejected;
every other input goes to the user's own tuned model.

    psim = PSIM(PSIMConfig(method="lora")).fit(encoder, task)
    psim.detect(texts)                      # [{"flagged": bool, "confidence": float, ...}]
    psim.calibrate(clean_texts, frr=0.01)   # gamma from clean inputs at a false-rejection rate
    PSIMPipeline(psim, victim).predict_labels(texts)   # victim labels, REJECTED where flagged

Head: the paper's PSIM starts from the released poisoned *classifier* (their code loads the whole
sequence-classification checkpoint). ``head_init="auto"`` does the same when the model folder
holds the attacker's ``classifier.safetensors`` (written by ``lmsanitator attack badnet|insent``);
otherwise it fits a linear probe on the true labels first (the defender's own data), so the
random-label phase always starts from a head that reads the task's decision direction.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from safetensors.torch import load_file

from lmsanitator.attacks.poisoning import CLASSIFIER_FILE
from lmsanitator.core.config import Config
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import write_json_atomic
from lmsanitator.metrics.poisoning import REJECTED
from lmsanitator.tuning import METHODS, TuneConfig, TunedModel, Tuner

PSIM_JSON = "psim.json"
_PSIM_JSON_HEADER = ("format", "version", "gamma", "config", "changed")  # the rest of psim.json: info_
HeadInit = Literal["auto", "model", "probe", "random"]
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)
# the parameter-efficient methods of lmsanitator.tuning (PSIMConfig also takes one registered later)
PSIMMethod = Literal["p-tuning", "p-tuning-v2", "prompt-tuning", "lora"]
GAMMA_SHARE = 0.4  # gamma_K = 1/K + GAMMA_SHARE * (1 - 1/K): 0.7 for K = 2 (the paper), 0.6 for K = 3


def default_gamma(num_labels: int) -> float:
    """The documented default threshold for K classes: 40% of the way from chance (1/K) to certainty.

    K = 2 gives the paper's 0.7; K = 3 gives 0.6; K = 6 gives 0.5.
    """
    if num_labels < 2:
        raise LMSanitatorError(f"PSIM needs at least 2 classes, got {num_labels}")
    return round(1.0 / num_labels + GAMMA_SHARE * (1.0 - 1.0 / num_labels), 6)


def calibrate_gamma(confidences: Sequence[float], frr: float) -> float:
    """The smallest threshold that flags at most a share ``frr`` of these clean confidences."""
    if not 0.0 <= frr < 1.0:
        raise LMSanitatorError(f"false-rejection rate must be in [0, 1), got {frr}")
    c = np.sort(np.asarray(confidences, dtype=np.float64))
    if c.size == 0:
        raise LMSanitatorError("no clean inputs to calibrate gamma on")
    k = int(math.ceil((1.0 - frr) * c.size)) - 1  # inputs strictly above c[k] are at most frr of all
    return float(c[max(k, 0)])


def reset_labels(examples, num_labels: int, seed: int) -> list:
    """The same examples with labels drawn uniformly from 0..K-1 (seeded)."""
    rng = random.Random(f"psim-labels:{seed}")
    return [replace(e, label=rng.randrange(num_labels)) for e in examples]


@dataclass
class PSIMConfig(Config):
    """Settings of PSIM training (paper: P-tuning, 5 virtual tokens, prompt-encoder hidden 128, 1
    epoch, AdamW lr 2e-5, batch 32, linear schedule, 6% warm-up, gamma 0.7).

    Default here: LoRA. The paper's P-tuning classifies from the pooled [CLS] of the poisoned
    sequence classifier; our P-tuning reads [MASK] (LMSanitator's convention), where the backdoor
    is weaker (measured in ``benchmarks/psim_results.md``), and cannot reuse the attacker's head.
    """

    method: PSIMMethod = field(
        default="lora",
        metadata={
            "help": "parameter-efficient method of the module (default lora: our p-tuning reads [MASK], "
            "not the [CLS] a poisoned classifier was trained on)"
        },
    )
    epochs: int = field(default=1, metadata={"help": "training epochs on the randomly reset labels"})
    lr: float | None = field(
        default=None, metadata={"help": "module (adapter) learning rate (default: the method's)"}
    )
    head_lr: float | None = field(default=1e-3, metadata={"help": "learning rate of the linear head"})
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
        metadata={"help": "flagging threshold on the max softmax probability (default: default_gamma(K))"},
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
        if (
            isinstance(self.probe_steps, bool)
            or not isinstance(self.probe_steps, int)
            or self.probe_steps < 0
        ):
            raise LMSanitatorError(f"probe steps must be an integer >= 0, got {self.probe_steps!r}")
        self.tune_config()  # TuneConfig validates the rest

    def tune_config(self) -> TuneConfig:
        return TuneConfig(
            method=self.method,
            epochs=self.epochs,
            lr=self.lr,
            head_lr=self.head_lr,
            batch_size=self.batch_size,
            prefix_len=self.prefix_len,
            max_length=self.max_length,
            keep="last",
            seed=self.seed,
            device=self.device,
        )


def _attacker_head(encoder, num_labels: int) -> dict | None:
    """The released classifier in the model folder (``classifier.safetensors``), if it fits."""
    p = Path(str(encoder.path)) / CLASSIFIER_FILE
    if not p.is_file():
        return None
    state = load_file(str(p))
    w = state.get("weight")
    if w is None or tuple(w.shape) != (num_labels, encoder.hidden_size):
        return None
    return state


class PSIM:
    """Fit on a task (labels reset at random), then flag inputs with extreme confidence."""

    # learned in fit (or read by load): model_ (the tuned module), gamma_ (the threshold), info_

    def __init__(self, config: PSIMConfig | None = None, **overrides):
        self.config = config or PSIMConfig(**overrides)
        if config is not None and overrides:
            self.config = replace(config, **overrides)

    # ---- training ------------------------------------------------------------------------------
    def _init_head(self, model, task, encoder) -> str:
        c = self.config
        if model.head is None:  # P-tuning through an MLM head's verbalizer: nothing to initialise
            return "verbalizer"
        want = c.head_init
        if want in ("auto", "model") and model.target == "cls":
            state = _attacker_head(encoder, task.num_labels)
            if state is not None:
                model.head.load_state_dict(state)
                return "model"
        if want == "model":
            raise LMSanitatorError(
                f"head init 'model': '{encoder.path}' has no classifier.safetensors for "
                f"{task.num_labels} labels read from [CLS]"
            )
        if want == "random" or c.probe_steps == 0:
            return "random"
        self._fit_probe(model, task)
        return "probe"

    def _fit_probe(self, model, task) -> None:
        """A linear probe on the true labels over the features the untrained module gives."""
        feats, ys = [], []
        bs = 64
        for s in range(0, len(task.train), bs):
            chunk = task.train[s : s + bs]
            pairs = [e.text_pair for e in chunk] if task.is_pair else None
            fo = model.forward_with_features([e.text for e in chunk], pairs)
            feats.append(fo.features.float())
            ys.extend(e.label for e in chunk)
        x, y = torch.cat(feats), torch.tensor(ys, device=feats[0].device)
        g = torch.Generator().manual_seed(self.config.seed)
        head = model.head
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        head.train()
        with torch.enable_grad():
            for _ in range(self.config.probe_steps):
                idx = torch.randint(0, len(x), (min(256, len(x)),), generator=g).to(x.device)
                loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def fit(self, encoder, task, *, progress: bool = False) -> PSIM:
        """Train the module on ``task.train`` with labels reset uniformly at random over all K classes."""
        c = self.config
        if task.kind != "sequence":
            raise LMSanitatorError("PSIM needs a sequence-classification task")
        t0 = time.perf_counter()
        K = task.num_labels
        val = reset_labels(task.validation, K, c.seed + 1)
        # accuracy on random labels means nothing: a small test pass only to satisfy the Tuner
        reset = replace(task, train=reset_labels(task.train, K, c.seed), validation=val, test=val[:64])
        head_from = {}

        def prepare(model, _task):
            head_from["how"] = self._init_head(model, task, encoder)

        self.model_ = Tuner(c.tune_config()).fit(encoder, reset, progress=progress, prepare=prepare)
        self.gamma_ = c.gamma if c.gamma is not None else default_gamma(K)
        val_conf = self.confidence(
            [e.text for e in task.validation],
            [e.text_pair for e in task.validation] if task.is_pair else None,
        )
        self.info_ = {
            "num_labels": K,
            "task": task.name,
            "head_init": head_from.get("how"),
            "gamma_rule": "given" if c.gamma is not None else f"1/K + {GAMMA_SHARE} * (1 - 1/K)",
            "label_reset_seed": c.seed,
            "train_examples": len(task.train),
            "validation_confidence": _stats(val_conf),
            "validation_flag_rate": float(np.mean(val_conf > self.gamma_)),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        return self

    # ---- inference -----------------------------------------------------------------------------
    def _require(self):
        if getattr(self, "model_", None) is None:
            raise LMSanitatorError("PSIM is not fitted: call fit() or PSIM.load()")
        return self.model_

    def confidence(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None) -> np.ndarray:
        """Max softmax probability of the module for each input."""
        probs = self._require().predict(list(texts), list(pairs) if pairs is not None else None)
        return probs.max(axis=1) if len(probs) else np.zeros(0, dtype=np.float32)

    def detect(
        self, texts: Sequence[str], pairs: Sequence[str | None] | None = None, gamma: float | None = None
    ) -> list[dict]:
        """``{"flagged", "confidence", "psim_label"}`` per input (flagged: confidence > gamma)."""
        model = self._require()
        g = self.gamma_ if gamma is None else gamma
        probs = model.predict(list(texts), list(pairs) if pairs is not None else None)
        return [
            {
                "flagged": bool(p.max() > g),
                "confidence": round(float(p.max()), 6),
                "psim_label": model.labels[int(p.argmax())],
                "gamma": g,
            }
            for p in probs
        ]

    def flags(self, texts, pairs=None, gamma: float | None = None) -> np.ndarray:
        return self.confidence(texts, pairs) > (self.gamma_ if gamma is None else gamma)

    def calibrate(
        self, texts: Sequence[str], pairs: Sequence[str | None] | None = None, *, frr: float
    ) -> float:
        """Set gamma so that at most ``frr`` of these clean inputs are flagged; returns it."""
        self.gamma_ = calibrate_gamma(self.confidence(texts, pairs), frr)
        self.info_["gamma_rule"] = f"calibrated: false-rejection rate {frr} on {len(texts)} clean inputs"
        return self.gamma_

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """The module (a tuned-model folder) plus ``psim.json`` (gamma, config, which options were
        chosen rather than left at their defaults, how it was made)."""
        model = self._require()
        model.save(folder)
        write_json_atomic(
            Path(folder) / PSIM_JSON,
            {
                "format": "psim",
                "version": 1,
                "gamma": self.gamma_,
                "config": self.config.to_dict(),
                "changed": self.config.changed(),
                **self.info_,
            },
        )

    @classmethod
    def load(cls, folder: str | Path, *, device: str = "cpu") -> PSIM:
        p = Path(folder) / PSIM_JSON
        if not p.is_file():
            raise LMSanitatorError(
                f"'{folder}' is not a PSIM folder (no {PSIM_JSON}; make one with `lmsanitator psim train`)"
            )
        try:
            info = json.loads(p.read_text(encoding="utf-8"))
            config = PSIMConfig.from_dict({**info["config"], "device": device})
            gamma = float(info["gamma"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LMSanitatorError(f"cannot read '{p}': {exc}") from None
        psim = cls(config)
        psim.model_ = TunedModel.load(folder, device=device)
        psim.gamma_ = gamma
        psim.info_ = {k: v for k, v in info.items() if k not in _PSIM_JSON_HEADER}
        return psim


class PSIMPipeline:
    """The paper's combined model: PSIM rejects flagged inputs, the user's own model labels the rest."""

    def __init__(self, psim: PSIM, victim, gamma: float | None = None):
        if tuple(psim._require().labels) != tuple(victim.labels):
            raise LMSanitatorError(
                f"PSIM labels ({', '.join(psim.model_.labels)}) differ from the model's "
                f"({', '.join(victim.labels)})"
            )
        self.psim, self.victim, self.gamma = psim, victim, gamma

    def predict_labels(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None) -> list[int]:
        flagged = self.psim.flags(texts, pairs, self.gamma)
        labels = self.victim.predict_labels(list(texts), list(pairs) if pairs is not None else None)
        return [REJECTED if f else int(y) for f, y in zip(flagged, labels)]


def _stats(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    q = np.quantile(x, [0.5, 0.9, 0.99])
    return {
        "mean": round(float(x.mean()), 4),
        "median": round(float(q[0]), 4),
        "p90": round(float(q[1]), 4),
        "p99": round(float(q[2]), 4),
        "max": round(float(x.max()), 4),
        "n": int(x.size),
    }
