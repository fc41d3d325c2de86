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

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.inputs import prediction_record
from lmsanitator.guard.monitor import DEFAULT_T_MATCH, PVMonitor
from lmsanitator.guard.purge import ORDERS, forward_rates, purge, to_fields

POLICIES = ("best", "predict", "reject")


@dataclass
class GuardConfig:
    t_match: float = DEFAULT_T_MATCH  # share of the hidden size whose signs must agree with a PV
    w_max: int = 3  # widest trigger window tried (words)
    # nothing unflags within w_max: predict on the candidate that matched the PVs least ("best"), on the
    # input as it is ("predict"), or reject it
    on_unresolved: str = "best"
    batch_size: int = 32
    # which window of a width is tried first: by gradient saliency (ours) or in reading order (the paper)
    purge_order: str = "saliency"

    def __post_init__(self) -> None:
        if not 0.5 < self.t_match <= 1.0:
            raise LMSanitatorError(f"--t-match is a share of the hidden size in (0.5, 1], got {self.t_match}")
        if self.w_max < 1:
            raise LMSanitatorError(f"--w-max must be >= 1, got {self.w_max}")
        if self.on_unresolved not in POLICIES:
            raise LMSanitatorError(
                f"--on-unresolved must be one of {', '.join(POLICIES)}, got '{self.on_unresolved}'"
            )
        if self.purge_order not in ORDERS:
            raise LMSanitatorError(
                f"--purge-order must be one of {', '.join(ORDERS)}, got '{self.purge_order}'"
            )
        if self.batch_size < 1:
            raise LMSanitatorError("batch size must be >= 1")


class Guard:
    """A tuned model (folder or :class:`~lmsanitator.tuning.TunedModel`) guarded by a PV set
    (file or :class:`~lmsanitator.scan.PVSet`)."""

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
        from lmsanitator.data.pvset import PVSet
        from lmsanitator.tuning.model import TunedModel

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
        self.monitor = PVMonitor(pvset.pvs, self.config.t_match).to(model.device)
        self.calibration = None

    # ---- the hot path: one forward pass, prediction + match rate ----------------------------------
    def monitor_batch(
        self, texts: Sequence, pairs: Sequence[str] | None = None
    ) -> tuple[list[np.ndarray], torch.Tensor]:
        """Class probabilities and the inputs x PVs match matrix of one batch, from one forward pass."""
        if not len(texts):
            return [], torch.zeros(0, len(self.pvset))
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
        th = self.monitor.calibrate(torch.cat(mats) if mats else torch.zeros(0, len(self.pvset)), frr)
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

    def predict(self, texts: Sequence, pairs: Sequence[str | None] | None = None) -> list[dict]:
        """One record per input: the prediction (on the purged input when flagged), ``flagged``,
        ``match_rate``, ``purged_text``, ``removed``, ``resolved``, ``rejected``, ``truncated``."""
        texts = list(texts)
        if pairs is not None and all(p is None for p in pairs):
            pairs = None
        if pairs is not None and len(pairs) != len(texts):
            raise LMSanitatorError(f"{len(texts)} texts but {len(pairs)} text pairs")
        for i, t in enumerate(texts):
            if (isinstance(t, str) and not t.strip()) or (not isinstance(t, str) and not list(t)):
                raise LMSanitatorError(f"input {i} is empty")
        token = self.model.task.kind == "token"
        bs = self.config.batch_size
        probs: list = []
        mats = []
        for s in range(0, len(texts), bs):
            p, m = self.monitor_batch(texts[s : s + bs], pairs[s : s + bs] if pairs is not None else None)
            probs.extend(p)
            mats.append(m)
        matrix = torch.cat(mats) if mats else torch.zeros(0, len(self.pvset))
        rates = matrix.max(dim=1).values if len(texts) else torch.zeros(0)
        flagged = self.monitor.flag(matrix).tolist()
        truncated = self._truncated(texts, pairs)
        idx = [i for i, f in enumerate(flagged) if f]
        fixes = purge(
            self.model,
            self.monitor,
            [to_fields(texts[i], pairs[i] if pairs else None) for i in idx],
            self.config.w_max,
            batch_size=max(bs, 32),
            order=self.config.purge_order,
        )
        fixed = dict(zip(idx, fixes))
        records = []
        for i in range(len(texts)):
            rec = {
                "flagged": bool(flagged[i]),
                "match_rate": round(float(rates[i]), 4),
                "purged_text": None,
                "removed": [],
                "resolved": True,
                "rejected": False,
                "truncated": bool(truncated[i]),
            }
            p = probs[i]
            if token:  # words cut off by truncation get uniform probabilities (as `predict` does)
                n_words = len(texts[i]) if not isinstance(texts[i], str) else len(texts[i].split())
                full = np.full(
                    (n_words, self.model.num_labels), 1.0 / self.model.num_labels, dtype=np.float32
                )
                full[: len(p)] = p
                p = full
            unguarded = p.argmax(-1).tolist() if token else int(p.argmax())
            if i in fixed:
                fx = fixed[i]
                rec["resolved"] = fx.resolved
                rec["candidates"] = fx.candidates
                use = fx.resolved or (self.config.on_unresolved == "best" and fx.fields is not None)
                rec["rejected"] = not fx.resolved and self.config.on_unresolved == "reject"
                if use:
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
            records.append(rec)
        return records

    def info(self) -> dict:
        return {
            "model": self.model.base_name,
            "method": self.model.method.name,
            "task": self.model.task.name,
            "target": self.model.target,
            "labels": list(self.model.labels),
            "pvs": len(self.pvset),
            **asdict(self.config),
            "calibration": self.calibration,
        }
