"""PSIM, the Poisoned Sample Identification Module (Zhao et al., "Defending Against Weight-Poisoning
Backdoor Attacks for Parameter-Efficient Fine-Tuning").

A PEFT module on the (possibly poisoned) encoder, trained on the task's training set with every
label reset uniformly at random over all K classes. It cannot learn the task, so it stays unsure
on clean inputs, while a weight-poisoning backdoor keeps its extreme confidence on triggered ones:
an input whose max softmax probability exceeds ``gamma`` is flagged as poisoned and rejected;
every other input goes to the user's own tuned model.

    psim = PSIM(PSIMConfig(method="lora")).fit(encoder, task)   # gamma: 1% FRR on task.validation
    psim.info_["validation_confidence"], psim.info_["warnings"]  # the self-check
    psim.detect(texts)                      # [{"flagged": bool, "confidence": float, ...}]
    psim.calibrate(clean_texts, frr=0.01)   # gamma again, from other clean inputs
    PSIMPipeline(psim, victim).predict_labels(texts)   # victim labels, REJECTED where flagged

Defaults (:class:`PSIMConfig`, issue 23): a step budget of 1000 randomly relabelled examples
(32 steps) whatever the training set's size, and gamma at 1% false rejections of the clean
validation inputs. Longer random-label training flattens the backdoor's confidence along with the
clean inputs' (measured in ``benchmarks/psim_results.md``).

Head: the paper's PSIM starts from the released poisoned *classifier* (their code loads the whole
sequence-classification checkpoint). ``head_init="auto"`` does the same when the model folder
holds the attacker's ``classifier.safetensors`` (written by ``lmsanitator attack badnet|insent``);
otherwise it fits a linear probe on the true labels first (the defender's own data), so the
random-label phase always starts from a head that reads the task's decision direction.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lmsanitator.attacks.poisoning import CLASSIFIER_FILE
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import write_json_atomic
from lmsanitator.metrics.poisoning import REJECTED
from lmsanitator.psim.calibration import (
    GAMMA_SHARE,
    PSIMWarning,
    calibrate_gamma,
    confidence_stats,
    default_gamma,
    self_check,
)

# HEAD_INITS, PSIMMethod: re-exported, the old import path of the CLI and the tests
from lmsanitator.psim.config import HEAD_INITS, PSIMConfig, PSIMMethod, budget, reset_labels  # noqa: F401
from lmsanitator.tuning import TunedModel, Tuner

PSIM_JSON = "psim.json"
_PSIM_JSON_HEADER = ("format", "version", "gamma", "config", "changed")  # the rest of psim.json: info_


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
        # the attacker's head reads the sequence feature: [CLS] on an encoder, the last token on a decoder
        if want in ("auto", "model") and model.target == encoder.sequence_target:
            state = _attacker_head(encoder, task.num_labels)
            if state is not None:
                model.head.load_state_dict(state)
                return "model"
        if want == "model":
            raise LMSanitatorError(
                f"head init 'model': '{encoder.path}' has no classifier.safetensors for "
                f"{task.num_labels} labels read from "
                + ("[CLS]" if encoder.sequence_target == "cls" else "the last token")
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
        """Train the module on (at most ``train_examples`` of) ``task.train`` with labels reset
        uniformly at random over all K classes; set gamma from the clean validation inputs; run the
        self-check (``info_["warnings"]``, also raised as :class:`PSIMWarning`)."""
        c = self.config
        if task.kind != "sequence":
            raise LMSanitatorError("PSIM needs a sequence-classification task")
        t0 = time.perf_counter()
        K = task.num_labels
        # the step budget: the same number of steps whatever the size of the user's training set
        task_b = replace(task, train=budget(task.train, c.train_examples, c.seed))
        val = reset_labels(task.validation, K, c.seed + 1)[:64]
        # accuracy on random labels means nothing: small validation/test passes only for the Tuner
        reset = replace(task_b, train=reset_labels(task_b.train, K, c.seed), validation=val, test=val)
        head_from = {}

        def prepare(model, _task):
            head_from["how"] = self._init_head(model, task_b, encoder)
            if c.head_frozen and model.head is not None:
                model.head.requires_grad_(False)

        self.model_ = Tuner(c.tune_config()).fit(encoder, reset, progress=progress, prepare=prepare)
        self.val_confidence_ = self.confidence(
            [e.text for e in task.validation],
            [e.text_pair for e in task.validation] if task.is_pair else None,
        )
        if c.gamma is not None:
            self.gamma_, rule, frr = c.gamma, "given", None
        elif len(task.validation):
            self.gamma_ = calibrate_gamma(self.val_confidence_, c.frr)
            rule, frr = _calibrated_rule(c.frr, len(task.validation)), c.frr
        else:
            self.gamma_, rule, frr = default_gamma(K), f"1/K + {GAMMA_SHARE} * (1 - 1/K)", None
        self.info_ = {
            "num_labels": K,
            "task": task.name,
            "head_init": head_from.get("how"),
            "head_trained": not c.head_frozen and head_from.get("how") != "verbalizer",
            "gamma_rule": rule,
            "label_reset_seed": c.seed,
            "train_examples": len(task_b.train),
            "train_examples_available": len(task.train),
            "steps": math.ceil(len(task_b.train) / c.batch_size) * c.epochs,
            "validation_confidence": confidence_stats(self.val_confidence_),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        self._self_check(frr)
        return self

    def _self_check(self, frr: float | None) -> None:
        """Flag rate of the clean validation inputs at gamma_, and the warnings of
        :func:`~lmsanitator.psim.calibration.self_check` (stored in ``info_`` and raised)."""
        i = self.info_
        conf = getattr(self, "val_confidence_", None)
        if conf is not None and conf.size:
            i["validation_flag_rate"] = float(np.mean(conf > self.gamma_))
        i["warnings"] = self_check(i["validation_confidence"], self.gamma_, i["num_labels"], frr)
        for w in i["warnings"]:
            warnings.warn(w, PSIMWarning, stacklevel=3)

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
        """Set gamma so that at most ``frr`` of these clean inputs are flagged; returns it. Their
        confidence spread replaces the reported validation spread and the self-check runs again."""
        conf = self.confidence(texts, pairs)
        self.gamma_ = calibrate_gamma(conf, frr)
        info = self.info_ if hasattr(self, "info_") else {}
        self.info_ = {**info, "gamma_rule": _calibrated_rule(frr, len(texts))}
        self.val_confidence_ = conf
        self.info_["validation_confidence"] = confidence_stats(conf)
        self.info_.setdefault("num_labels", self.model_.num_labels)
        self._self_check(frr)
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


def _calibrated_rule(frr: float, n: int) -> str:
    return f"calibrated: false-rejection rate {frr} on {n} clean validation inputs"
