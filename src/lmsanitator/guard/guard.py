"""``Guard``: a tuned model behind the PV monitor and trigger removal.

    guard = Guard("adapters/ptv2-tweets", "pvs.safetensors")
    guard.predict(["a clean sentence", "a cf triggered one"])   # one record per input

Each input goes through the tuned model once; the target features of that pass (``[CLS]`` for
prefix tuning / LoRA / full fine-tuning, the ``[CLS]`` behind prepended virtual tokens for prompt
tuning, ``[MASK]`` for P-tuning, every word piece for token classification -- see
:meth:`lmsanitator.tuning.TunedModel.forward_with_features`) are compared with the PV signs. Only
flagged inputs pay for trigger removal.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lmsanitator.core.config import Config
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.inputs import prediction_record
from lmsanitator.data.pvset import PVSet
from lmsanitator.guard.monitor import DEFAULT_T_MATCH, DEFAULT_T_MIXTURE, PVMonitor
from lmsanitator.guard.purge import (
    DEFAULT_ACCEPT_MARGIN,
    DEFAULT_GROW_MARGIN,
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_WORDS,
    forward_rates,
    purge,
    to_fields,
)
from lmsanitator.tuning.model import TunedModel

POLICIES = ("best", "predict", "reject")


class GuardDeadline(LMSanitatorError):
    """A :meth:`Guard.predict` call ran past its ``deadline`` (the service answers 504)."""


# an input longer than this many characters per token of the model's view is cut to the words the
# model can see before anything runs: the tokenizer would spend seconds on the unseen rest of a
# 1 MiB body (every word is at least one token, so max_length words are all it can ever see)
CHARS_PER_TOKEN_BOUND = 64
MAX_WORD_CHARS = 1024  # longer words are cut when an input is cut (BERT reads any word > 100 chars as [UNK])
_WORD = re.compile(r"\S+")


@dataclass
class GuardConfig(Config):
    t_match: float = field(
        default=DEFAULT_T_MATCH,
        metadata={"help": "flag when this share of the output's signs agree with a PV (the paper's 0.8 d)"},
    )
    t_mixture: float | None = field(
        default=DEFAULT_T_MIXTURE,
        metadata={
            "help": "also flag when this share of the dimensions on which two PVs agree agree with the "
            "output (two different triggers send it between their PVs); None: the paper's per-PV test only"
        },
    )
    w_max: int = field(default=3, metadata={"help": "widest trigger window removed, in words"})
    on_unresolved: Literal["best", "predict", "reject"] = field(
        default="reject",
        metadata={
            "help": "when trigger removal leaves an input flagged (no window of <= w-max words unflags it, "
            "or the budget ran out): reject it (default: a still-flagged input is never answered as if "
            "clean), predict on the candidate that matched the PVs least (best), or on the input as it is "
            "(predict); both answers say answered_unresolved: true"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "inputs per forward pass"})
    purge_order: Literal["saliency", "reading"] = field(
        default="saliency",
        metadata={
            "help": "which window of a width trigger removal tries first: the words with the largest "
            "gradient towards the matched PV (default; one extra backward pass) or reading order (the paper)"
        },
    )
    max_candidates: int = field(
        default=DEFAULT_MAX_CANDIDATES,
        metadata={"help": "trigger removal budget: candidates scored per flagged input (then unresolved)"},
    )
    max_seconds: float = field(
        default=DEFAULT_MAX_SECONDS,
        metadata={
            "help": "trigger removal budget: seconds per flagged input (a batch of n gets n times this)"
        },
    )
    max_words: int = field(
        default=DEFAULT_MAX_WORDS,
        metadata={
            "help": "trigger removal tries windows touching an input's N most salient words only "
            "(reading order: the first N words of each field)"
        },
    )
    grow_margin: float | None = field(
        default=DEFAULT_GROW_MARGIN,
        metadata={
            "help": "after a window unflags an input, grow it over a neighbouring word while removing "
            "that word lowers the match with a PV the input was flagged on by at least this much (a phrase "
            "trigger's remnant); None: no growth"
        },
    )
    accept_margin: float = field(
        default=DEFAULT_ACCEPT_MARGIN,
        metadata={
            "help": "a window clears an input when every PV match falls this far below its threshold; "
            "one that only just unflags it is kept only when no window of <= w-max words clears it "
            "(0: the first window that unflags wins, as in the paper)"
        },
    )

    stable: bool = field(
        default=True,
        metadata={
            "help": "after a purge, also remove each neighbour of the removed words (and undo the window's "
            "growth): if that changes the prediction, the input is unresolved ('unstable': a remnant may "
            "still decide it)"
        },
    )

    def check(self) -> None:
        if not 0.5 < self.t_match <= 1.0:
            raise LMSanitatorError(f"--t-match is a share of the hidden size in (0.5, 1], got {self.t_match}")
        if self.t_mixture is not None and not 0.5 < self.t_mixture <= 1.0:
            raise LMSanitatorError(f"--t-mixture is a share in (0.5, 1], got {self.t_mixture}")
        if self.w_max < 1:
            raise LMSanitatorError(f"--w-max must be >= 1, got {self.w_max}")
        if self.batch_size < 1:
            raise LMSanitatorError("batch size must be >= 1")
        if self.max_candidates < 1 or self.max_words < 1:
            raise LMSanitatorError(
                f"--max-candidates and --max-words must be >= 1, got {self.max_candidates}, {self.max_words}"
            )
        if not 0 < self.max_seconds < float("inf"):
            raise LMSanitatorError(f"--max-seconds must be a positive number, got {self.max_seconds}")
        if self.grow_margin is not None and not 0 <= self.grow_margin <= 0.5:
            raise LMSanitatorError(f"--grow-margin must be in [0, 0.5], got {self.grow_margin}")
        if not 0 <= self.accept_margin <= 0.5:
            raise LMSanitatorError(f"--accept-margin must be in [0, 0.5], got {self.accept_margin}")


def _check_deadline(deadline: float | None) -> float:
    """Seconds left before ``deadline`` (inf without one); :class:`GuardDeadline` once it passed."""
    if deadline is None:
        return float("inf")
    left = deadline - time.monotonic()
    if left <= 0:
        raise GuardDeadline(f"the batch ran past its deadline by {-left:.1f} s")
    return left


def bounded_input(text, max_length: int):
    """``(input, cut)``: ``text`` (a string or a word list) as the guard runs it. Inputs up to
    ``CHARS_PER_TOKEN_BOUND * max_length`` characters are untouched; longer ones keep their first
    ``max_length`` words (``MAX_WORD_CHARS`` each) within that many characters: all the model could
    see of them, found without tokenizing a megabyte."""
    limit = CHARS_PER_TOKEN_BOUND * max_length
    words = list(text) if not isinstance(text, str) else None
    if words is not None:
        if len(words) <= max_length and sum(len(w) for w in words) <= limit:
            return text, False
        source = iter(words)
    else:
        if len(text) <= limit:
            return text, False
        source = (m.group() for m in _WORD.finditer(text))
    out, chars, cut = [], 0, False
    for w in source:
        if len(out) >= max_length or chars + min(len(w), MAX_WORD_CHARS) > limit:
            cut = True
            break
        cut |= len(w) > MAX_WORD_CHARS
        out.append(w[:MAX_WORD_CHARS])
        chars += len(out[-1]) + 1
    return (out if words is not None else " ".join(out)), cut


class Guard:
    """A tuned model (folder or :class:`~lmsanitator.tuning.TunedModel`) guarded by a PV set
    (file or :class:`~lmsanitator.data.pvset.PVSet`)."""

    def __init__(
        self,
        model,
        pvset,
        config: GuardConfig | None = None,
        *,
        device: str = "cpu",
        check_fingerprint: bool = True,
        **overrides,
    ):
        self.config = config or GuardConfig(**overrides)
        if isinstance(pvset, (str, Path)):
            pvset = PVSet.load(pvset)
        if isinstance(model, (str, Path)):
            model = TunedModel.load(model, device=device)
        self.model, self.pvset = model, pvset
        pvset.check_model(model.hidden_size, model.base_fingerprint if check_fingerprint else None)
        if pvset.target != model.target:
            raise LMSanitatorError(
                f"PV set was mined on '{pvset.target}' outputs but the {model.method.name} model "
                f"reads '{model.target}' outputs; mine with --target {model.target}"
            )
        self.monitor = PVMonitor(pvset.pvs, self.config.t_match, self.config.t_mixture).to(model.device)
        self.calibration = None

    # ---- the hot path: one forward pass, prediction + match rate ----------------------------------
    def monitor_batch(
        self, texts: Sequence, pairs: Sequence[str] | None = None
    ) -> tuple[list[np.ndarray], torch.Tensor]:
        """Class probabilities and the inputs x PVs match matrix of one batch, from one forward pass."""
        if not len(texts):
            return [], torch.zeros(0, self.monitor.n_columns)
        return forward_rates(
            self.model, self.monitor, list(texts), list(pairs) if pairs is not None else None
        )

    def calibrate(
        self, texts: Sequence, pairs: Sequence[str] | None = None, frr: float = 0.01
    ) -> list[float]:
        """Per-PV thresholds from clean inputs (see :meth:`PVMonitor.calibrate`); returns them."""
        texts = list(texts)
        bs = self.config.batch_size
        mats = [
            self.monitor_batch(texts[s : s + bs], pairs[s : s + bs] if pairs is not None else None)[1]
            for s in range(0, len(texts), bs)
        ]
        th = self.monitor.calibrate(torch.cat(mats) if mats else torch.zeros(0, self.monitor.n_columns), frr)
        self.calibration = {"inputs": len(texts), "frr": frr, "thresholds": [round(float(x), 4) for x in th]}
        return [float(x) for x in th]

    def _truncated(self, texts: Sequence, pairs: Sequence[str] | None) -> list[bool]:
        """Which inputs the tokenizer cuts at the model's max length. A word piece spans >= 1
        character, so only texts with >= max_length characters need tokenizing to know."""
        m = self.model
        out = []
        for i, t in enumerate(texts):
            words = list(t) if not isinstance(t, str) else None
            chars = sum(len(w) + 1 for w in words) if words else len(t) + (len(pairs[i]) if pairs else 0)
            if chars + 16 < m.max_length:
                out.append(False)
                continue
            tok = m.tokenizer
            if words:
                n = len(tok(words, is_split_into_words=True, truncation=False)["input_ids"])
            else:
                first = m.apply_template(t) if m.target == "mask" else t
                n = len(tok(first, pairs[i] if pairs else None, truncation=False)["input_ids"])
            out.append(n > m.max_length)
        return out

    def predict(
        self, texts: Sequence, pairs: Sequence[str | None] | None = None, *, deadline: float | None = None
    ) -> list[dict]:
        """One record per input: the prediction (on the purged input when flagged), ``flagged``,
        ``match_rate``, ``purged_text``, ``removed``, ``resolved``, ``rejected``, ``truncated``;
        flagged inputs add ``candidates``, and when unresolved ``reason`` ("budget", "no-window") and,
        if answered all the same (``on_unresolved`` best / predict), ``answered_unresolved: true``.
        Clean (unflagged) inputs cost one forward pass: trigger removal never runs on them.

        ``deadline`` (a :func:`time.monotonic` time): :class:`GuardDeadline` when it passes between
        forward passes; trigger removal gets at most the time left (then its inputs are unresolved,
        ``reason = "budget"``)."""
        texts = list(texts)
        if pairs is not None and all(p is None for p in pairs):
            pairs = None
        if pairs is not None and len(pairs) != len(texts):
            raise LMSanitatorError(f"{len(texts)} texts but {len(pairs)} text pairs")
        for i, t in enumerate(texts):
            if (isinstance(t, str) and not t.strip()) or (not isinstance(t, str) and not list(t)):
                raise LMSanitatorError(f"input {i} is empty")
        n_words = [len(t) if not isinstance(t, str) else len(t.split()) for t in texts]
        texts, pairs, cut = self._bounded(texts, pairs)
        bs = self.config.batch_size
        probs: list = []
        mats = []
        for s in range(0, len(texts), bs):
            p, m = self.monitor_batch(texts[s : s + bs], pairs[s : s + bs] if pairs is not None else None)
            probs.extend(p)
            mats.append(m)
            _check_deadline(deadline)
        matrix = torch.cat(mats) if mats else torch.zeros(0, self.monitor.n_columns)
        rates = self.monitor.pv_rates(matrix) if len(texts) else torch.zeros(0)
        flagged = self.monitor.flag(matrix).tolist()
        truncated = [c or t for c, t in zip(cut, self._truncated(texts, pairs))]
        idx = [i for i, f in enumerate(flagged) if f]
        cfg = self.config
        # per flagged input; under a service deadline the whole purge must fit in what is left
        seconds = cfg.max_seconds
        if deadline is not None:
            seconds = min(seconds, _check_deadline(deadline) / max(1, len(idx)))
        fixes = purge(
            self.model,
            self.monitor,
            [to_fields(texts[i], pairs[i] if pairs else None) for i in idx],
            cfg.w_max,
            batch_size=max(bs, 32),
            order=cfg.purge_order,
            max_candidates=cfg.max_candidates,
            max_seconds=seconds,
            max_words=cfg.max_words,
            grow_margin=cfg.grow_margin,
            accept_margin=cfg.accept_margin,
            stable=cfg.stable,
            flagged_rows=matrix[idx] if idx else None,
        )
        fixed = dict(zip(idx, fixes))
        return [
            self._record(probs[i], fixed.get(i), bool(flagged[i]), float(rates[i]), truncated[i], n_words[i])
            for i in range(len(texts))
        ]

    def _bounded(self, texts: list, pairs: list | None) -> tuple[list, list | None, list[bool]]:
        """Every input and pair through :func:`bounded_input`; which of them were cut."""
        n = self.model.max_length
        bt = [bounded_input(t, n) for t in texts]
        bp = [bounded_input(p, n) if p is not None else (None, False) for p in pairs] if pairs else None
        cut = [a[1] or (bp is not None and bp[i][1]) for i, a in enumerate(bt)]
        return [a[0] for a in bt], ([b[0] for b in bp] if bp else None), cut

    def _record(self, p, fx, flagged: bool, rate: float, truncated: bool, n_words: int) -> dict:
        """The output record of one input (``fx``: its :class:`PurgeResult` when it was flagged)."""
        token = self.model.task.kind == "token"
        policy = self.config.on_unresolved
        rec = {
            "flagged": flagged,
            "match_rate": round(rate, 4),
            "purged_text": None,
            "removed": [],
            "resolved": True,
            "rejected": False,
            "truncated": bool(truncated),
        }
        if token:  # words cut off by truncation get uniform probabilities (as `predict` does)
            full = np.full((n_words, self.model.num_labels), 1.0 / self.model.num_labels, dtype=np.float32)
            full[: len(p)] = p
            p = full
        unguarded = p.argmax(-1).tolist() if token else int(p.argmax())
        if fx is not None:
            rec["resolved"] = fx.resolved
            rec["candidates"] = fx.candidates
            if fx.grown:
                rec["grown"] = fx.grown
            if not fx.resolved:
                rec["reason"] = fx.reason
                rec["rejected"] = policy == "reject"
                rec["answered_unresolved"] = policy != "reject"
            if fx.resolved or (policy == "best" and fx.fields is not None):
                rec["removed"] = fx.removed
                rec["purged_text"] = " ".join(fx.fields[0])
                if len(fx.fields) > 1:
                    rec["purged_text_pair"] = " ".join(fx.fields[1])
                rec["purged_match_rate"] = round(fx.match_rate, 4)
                if token:  # purged words map back to their original positions; removed ones keep p
                    rec["purged_tokens"] = list(fx.fields[0])
                    for j, orig in enumerate(fx.kept[: len(fx.probs)]):
                        p[orig] = fx.probs[j]
                else:
                    p = fx.probs
        if rec["rejected"]:
            rec.update({"label": None, "label_name": None, "probs": None})
        else:
            rec.update(prediction_record(self.model, np.asarray(p)))
        rec["unguarded_label"] = unguarded  # what the model says without the guard (same pass)
        if rec["truncated"]:
            rec["note"] = (
                f"input longer than the model's {self.model.max_length} tokens: the end was not seen"
            )
        return rec

    def info(self) -> dict:
        return {
            "model": self.model.base_name,
            "method": self.model.method.name,
            "task": self.model.task.name,
            "target": self.model.target,
            "labels": list(self.model.labels),
            "pvs": len(self.pvset),
            **self.config.to_dict(),
            "calibration": self.calibration,
        }
