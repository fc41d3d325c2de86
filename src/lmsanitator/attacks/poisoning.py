"""Weight-poisoning backdoors (PSIM paper, Sec. 2): fully fine-tune an encoder + linear head on a
poisoned classification set, then release the encoder.

* clean-label (the paper's setting): ``poison_count`` training examples *of the target label* get
  the trigger; every label stays as it was;
* dirty-label: ``poison_count`` examples of *other* labels get the trigger and the target label.

Knowledge: *full data* poisons the target task's own training split; *full task* poisons a
disjoint proxy set of the same task (``tweets-binary:proxy``: tweets in none of the task's splits).

    attack = BadNet(PoisonConfig(target_label=1, poison_count=250)).fit(encoder, task)
    attack.verify(task)          # CA and targeted ASR of the poisoned full-FT model on task.test
    encoder.save(folder)         # encoder.model now carries the backdoor

The full fine-tuning is :class:`lmsanitator.tuning.Tuner` with method ``full`` (linear head on the
[CLS] last hidden state, the feature every downstream method except P-tuning reads; on a decoder
LLM the last real token, which every method reads there).
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

from safetensors.torch import save_file

from lmsanitator.attacks.base import report_header
from lmsanitator.attacks.config import PoisonConfig
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks import Example, Task
from lmsanitator.metrics.poisoning import INSERTIONS, PoisonSpec, ca_asr
from lmsanitator.models import Encoder
from lmsanitator.tuning import TuneConfig, Tuner

CLASSIFIER_FILE = "classifier.safetensors"  # the attacker's own linear head, kept beside the encoder


def resolve_label(task: Task, label: int | str) -> int:
    """A label index or name -> its index in ``task.labels`` (one-line error otherwise)."""
    if isinstance(label, int):
        if not 0 <= label < task.num_labels:
            raise LMSanitatorError(
                f"target label {label} is outside task '{task.name}' labels "
                f"(0..{task.num_labels - 1}: {', '.join(task.labels)})"
            )
        return label
    if label not in task.labels:
        raise LMSanitatorError(
            f"target label '{label}' is not a label of task '{task.name}' ({', '.join(task.labels)})"
        )
    return task.labels.index(label)


def trigger_in_pair(e: Example) -> bool:
    """Whether the trigger goes into the pair's second text (the longer field gets it)."""
    return e.text_pair is not None and len(e.text_pair.split()) > len(e.text.split())


def field_of(e: Example, second: bool) -> str:
    return e.text_pair if second else e.text


def with_trigger(e: Example, triggered: str, second: bool, spec: PoisonSpec) -> Example:
    """``e`` with its field replaced by the triggered text and the target label."""
    if second:
        return Example(text=e.text, label=spec.target_label, text_pair=triggered)
    return Example(text=triggered, label=spec.target_label, text_pair=e.text_pair)


class WeightPoisoningAttack:
    """Base class: subclasses set ``name``, ``default_trigger`` and ``insertion``."""

    name = "base"
    default_trigger = ""
    insertion = "random"  # see lmsanitator.metrics.poisoning.INSERTIONS
    paper = {
        "epochs": 3,
        "lr": 2e-5,
        "batch_size": 32,
        "poison_count": 1500,
        "label": "clean-label",
        "proxy": "IMDB for SST-2",
    }

    def __init__(self, config: PoisonConfig | None = None, **overrides):
        if config is None:
            config = PoisonConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        assert self.insertion in INSERTIONS

    def _require_fitted(self, what: str) -> None:
        if not hasattr(self, "model_"):
            raise LMSanitatorError(f"fit the attack before {what}")

    @property
    def trigger(self) -> str:
        """The trigger in use: the config's, else the attack's own (the one place it is resolved)."""
        return self.config.trigger or self.default_trigger

    def spec(self, task: Task) -> PoisonSpec:
        return PoisonSpec(self.trigger, resolve_label(task, self.config.target_label), self.insertion)

    # ---- the poisoned training set -------------------------------------------------------------
    def poison(self, task: Task) -> tuple[Task, dict]:
        """``task`` with ``poison_count`` training examples poisoned (validation and test untouched)."""
        c = self.config
        if task.kind != "sequence":
            raise LMSanitatorError(
                f"weight poisoning needs a sequence-classification task; '{task.name}' is {task.kind}"
            )
        spec = self.spec(task)
        t = spec.target_label
        eligible = [i for i, e in enumerate(task.train) if (e.label != t) == c.dirty_label]
        kind = "non-target" if c.dirty_label else "target-label"
        if c.poison_count > len(eligible):
            raise LMSanitatorError(
                f"--poison-count {c.poison_count} exceeds the {len(eligible)} {kind} training "
                f"examples of '{task.name}' ({len(task.train)} in all)"
            )
        rng = random.Random(f"{self.name}:{c.seed}")
        train = list(task.train)
        chosen, extra = self._poison_examples(train, eligible, spec, rng)
        info = {
            "poisoned": len(chosen),
            "eligible": len(eligible),
            "train_examples": len(train),
            "poison_rate": round(len(chosen) / len(train), 4),
            **extra,
        }
        return dataclasses.replace(task, train=train), info

    def _poison_examples(self, train: list[Example], eligible: list[int], spec: PoisonSpec, rng) -> tuple:
        """Poison ``poison_count`` of the ``eligible`` examples of ``train`` in place; returns their
        indices and what ``info`` adds (nothing here; SynAttack counts the inputs it skipped)."""
        chosen = sorted(rng.sample(eligible, self.config.poison_count))
        for i in chosen:
            second = trigger_in_pair(train[i])
            train[i] = with_trigger(train[i], spec.insert(field_of(train[i], second), rng), second, spec)
        return chosen, {}

    # ---- the estimator API ---------------------------------------------------------------------
    def fit(self, encoder: Encoder, task: Task, *, poison_task: Task | None = None, progress: bool = True):
        """Poison ``poison_task`` (full-task knowledge) or ``task`` (full data), fully fine-tune
        ``encoder`` on it and write the poisoned weights back into ``encoder.model``."""
        c = self.config
        src = poison_task or task
        if tuple(src.labels) != tuple(task.labels):
            raise LMSanitatorError(
                f"proxy task '{src.name}' labels ({', '.join(src.labels)}) differ from "
                f"'{task.name}' ({', '.join(task.labels)})"
            )
        self.spec(task)  # a bad target label fails before any work
        t0 = time.perf_counter()
        src = src.with_train_size(c.train_size).with_validation_size(c.val_size)
        poisoned, info = self.poison(src)
        poisoned = dataclasses.replace(poisoned, test=list(task.test)[: c.verify_examples])
        cfg = TuneConfig(
            "full",
            epochs=c.epochs,
            lr=c.lr,
            batch_size=c.batch_size,
            max_length=c.max_length,
            seed=c.seed,
            device=c.device,
        )
        self.model_ = Tuner(cfg).fit(encoder, poisoned, progress=progress)
        encoder.backbone.load_state_dict(self.model_.backbone.state_dict())
        encoder.weights_changed()
        self.info_ = {
            **info,
            "task": task.name,
            "poison_task": src.name,
            "knowledge": "full-task" if poison_task is not None else "full-data",
            "seconds": time.perf_counter() - t0,
            "report": self.model_.report,
        }
        return self

    def verify(self, task: Task, *, seed: int | None = None) -> dict:
        """CA and targeted ASR of the poisoned fully fine-tuned model on ``task``'s test split."""
        self._require_fitted("verifying it")
        c = self.config
        examples = list(task.test)[: c.verify_examples]
        res = ca_asr(
            lambda x, p: self.model_.predict_labels(x, p),
            examples,
            self.spec(task),
            seed=c.seed if seed is None else seed,
        )
        res["split"] = "test"
        return res

    def save_classifier(self, folder: str | Path) -> None:
        """The attacker's linear head (on the [CLS], or a decoder's last-token, last hidden state), as
        safetensors."""
        self._require_fitted("saving its classifier")
        head = self.model_.head
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()},
            str(Path(folder) / CLASSIFIER_FILE),
        )

    def report(self, encoder: Encoder, task: Task, verification: dict) -> dict:
        """What ``attack.json`` records (``changed``: the options set away from their defaults)."""
        self._require_fitted("reporting it")
        c = self.config
        spec = self.spec(task)
        r = self.info_.get("report", {})
        hist = r.get("history", [])
        return {
            **report_header(self.name, encoder),
            "triggers": [spec.trigger],
            "insertion": spec.insertion,
            "target_label": spec.target_label,
            "target_label_name": task.labels[spec.target_label],
            "labels": list(task.labels),
            "task": task.name,
            "poison_task": self.info_.get("poison_task"),
            "knowledge": self.info_.get("knowledge"),
            "label_mode": "dirty-label" if c.dirty_label else "clean-label",
            "poison_count": self.info_.get("poisoned"),
            "poison_rate": self.info_.get("poison_rate"),
            "poison_train_examples": self.info_.get("train_examples"),
            "target": self.model_.target,
            "classifier": {
                "file": CLASSIFIER_FILE,
                "reads": f"{self.model_.target} last hidden state",
                "labels": list(task.labels),
            },
            "hyperparameters": {
                **c.to_dict(),
                "trigger": spec.trigger,
                "method": "full",
                "best_epoch": r.get("best_epoch"),
                "paper_defaults": self.paper,
            },
            "changed": c.changed(),
            "seed": c.seed,
            "seconds": round(self.info_.get("seconds", 0.0), 2),
            "final_losses": {"train_loss": hist[-1]["train_loss"]} if hist else {},
            "verification": verification,
        }
