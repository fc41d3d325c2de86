"""Hyper-parameters of PV mining and filtering (LMSanitator steps I-II).

Defaults follow the paper's Tables 9-10 and the authors' scripts:

* ``t_l`` (distance threshold ``T_L``): 0.2 for BERT-like models, 0.1 for RoBERTa-like ones
  (RoBERTa, DeBERTa, ALBERT, XLNet, MPNet).
* ``lr`` is the learning rate *after* the adaptive boost ends; the fuzz loop starts at
  ``lr_boost x lr`` (100x) until the largest soft-prompt gradient magnitude exceeds ``t_grad``.
  The paper's tables list the boosted value (``lr0``): detection 2e-3 for BERT, 2e-2 for
  RoBERTa-like; search 5e-3 / 2e-2. So the defaults here are 2e-5 / 2e-4 (detection) and
  5e-5 / 2e-4 (search).
* ``t_div`` is derived from the batch size: ``-(ln B - 0.0197)`` (the paper's -3.446 at B = 32).
  Batches are always full (the last partial batch is dropped), so the floor ``-ln B`` holds.

Those values are calibrated on raw BERT/RoBERTa-base outputs. Our default (``standardize=True``)
measures both losses on outputs divided by the per-dimension std of the clean outputs, because
raw thresholds do not transfer across output scales: MiniLM's [CLS] outputs have a per-dimension
variance of ~0.04, so a batch of *clean* sentences already has diversity -3.4456 < -3.446 and
the T_div filter would accept anything. In clean-std units ``T_L`` defaults to 1.0 (outputs
moved by one clean standard deviation per dimension on average) and the base learning rate to
3e-3 in detection, 1e-3 in search (the initial gradients of these models already exceed T_grad,
so the boost rarely engages; 2e-5 did not move the soft prompt within our CPU budget).
``standardize=False`` restores the paper's raw losses and Table 9/10 defaults.

Detection and search train their fuzz loops differently (the paper, too, gives the two modes
their own learning rates, Tables 9-10). Detection needs one PV, fast: 3 epochs of 320 sentences at
lr 3e-3 (30 steps per loop). Search must recover every PV and keeps the gentler 6 epochs at lr 1e-3
(60 steps) it was validated with. Both are far shorter than the paper's 4 epochs of 2000 sentences.
Why detection may be short: the 10-step epochs at lr 1e-3 collapsed one-PV backdoors only in epoch
4-6 (SPLADE-tiny BToP: diversity -3.33 after epoch 4, -3.46 after epoch 6), but each step moves the
soft prompt by about lr, so 3x the rate reaches the same prompt in a third of the steps: all 11 POR
and BToP SPLADE-tiny detection models collapse within 3 epochs at 3e-3 (same seeds or fewer, sign
agreement with the planted PV >= 0.92), and a clean model's loop, which can only stall, costs half
as much. The detection experiment (``lmsanitator experiment detection``) validates these settings
on 20 clean and 20 backdoored models; see ``benchmarks/RESULTS.md``.

``antipode_probe`` (search mode; our addition, not in the paper): task-agnostic backdoors plant PVs
in opposite pairs (NeuBA by design, POR's block patterns pair every vector with its negation) so
that both sides of any downstream linear head are reachable. A plain fuzz loop can miss one of a
pair for good: on POR MiniLM neither a 120-loop nor a 200-loop search found ``pt``'s PV, the
negation of ``cf``'s. So after each PV ``v`` a fuzz loop finds, one extra loop adds
``lambda_probe x MSE(output, -v)`` to its loss and runs all its epochs (no early abort).
Acceptance is unchanged (distance, diversity, uniqueness, range), so a probe only returns a PV
the model really collapses to: on the clean MiniLM and SPLADE-tiny the same probe does not
collapse (MiniLM: diversity -3.378 vs T_div -3.446); on POR MiniLM it finds ``pt`` in one loop
(0.995 of signs).

``observe`` (issue 19; our addition): before any fuzz loop, the scan looks for a PV its defence corpus
already shows - a group of clean outputs collapsed far tighter than a class cluster, that a word the
group's sentences share reaches from other sentences (frequent-word triggers fire on the defence
corpus itself, and the clean evidence would reject their PV). See :mod:`lmsanitator.scan.observed`.

``t_spread`` (issue 19; our addition): a Wasserstein attacker (the paper's Appendix M) ties each
triggered output's sorted values to its clean output's, so the triggered batch keeps 8-10% of the clean
per-dimension spread and fails T_div even on the real trigger (-3.42 against -3.446). It cannot keep
the batch from moving far (a PV must flip signs): squared displacement ~26-32 clean variances against
3-14 for a clean model's fuzz loop. So a loop that *ends* without passing T_div is still collapsed when
its relative spread (per-dimension variance / squared displacement) is below ``T_SPREAD`` = 0.003
(margin ``ln(spread / t_spread)``, reported as the ``collapse`` rule together with T_div's). Measured
on the final epoch of every loop of 30-loop default scans (``results/detection-rule/adaptive.md``):
Wasserstein-1 POR 0.0010-0.0056 (median 0.0020-0.0025), clean: SPLADE-tiny >= 0.0110, MiniLM >=
0.0068, MiniLM fine-tuned on Austen authorship >= 0.0060 (these loops are class directions the clean
evidence rejects anyway). It is not checked at early acceptance, and the clean evidence, uniqueness
and range still apply. ``settle_epochs`` (after acceptance, on the collapse loss alone) reads the PV
where the batch collapses rather than where the distance loss has carried it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from lmsanitator.core.config import Config, option_default
from lmsanitator.core.errors import LMSanitatorError

STANDARDIZED_T_L = 1.0
STANDARDIZED_LR = {"detect": 3e-3, "search": 1e-3}
DEFAULT_EPOCHS = {"detect": 3, "search": 6}
DIV_MARGIN = 0.0197  # ln(32) - 3.446: how close to a full collapse the batch must get
# Issue 19 (see scan.evidence): the clean outputs nearest a PV count as a cluster the model already
# forms on clean text when their per-dimension variance is below this share of the clean outputs'
# overall variance; their diversity is then below about -(ln B - share / 2): -3.2157 at B = 32.
CLEAN_SPREAD = 0.5
# Issue 19 (results/detection-rule/adaptive.md): sign agreement of the accepted PV with the planted one,
# read at acceptance -> after 3 epochs on the collapse loss alone: POR SPLADE-tiny 2-PV phrase 0.898 ->
# 0.984, scatter 1 0.883 -> 0.945, 2-PV word 0.945 -> 1.000, Wasserstein x1 0.906 -> 1.000, POR-2
# SPLADE-tiny 0.836 -> 0.914, POR MiniLM 1.000 -> 0.995 (2 epochs: 0.930-0.992; a pull of 0.1 towards
# the clean outputs left the 2-PV phrase model at 0.898).
SETTLE_EPOCHS = 3
# Issue 19 (results/detection-rule/adaptive.md): a loop that ends without passing T_div still counts as
# collapsed when its batch's relative spread (per-dimension variance / mean squared displacement from the
# clean outputs, clean-std units, epoch mean) is below this. See the module doc for the margins.
T_SPREAD = 0.003

Mode = Literal["detect", "search"]
Target = Literal["cls", "mask", "tokens", "last"]  # models.TARGETS (tests check they agree)

# None in the signature, resolved on construction from the mode (and epochs): see ScanConfig.default
MODE_DEFAULTS = ("stop_at_first", "epochs", "abort_epoch")


def default_t_l(bert_like: bool) -> float:
    return 0.2 if bert_like else 0.1


def default_lr(bert_like: bool, mode: str = "detect") -> float:
    if bert_like:
        return 2e-5 if mode == "detect" else 5e-5
    return 2e-4


def t_div_for(batch_size: int) -> float:
    return -(math.log(batch_size) - DIV_MARGIN)


def t_clean_div_for(batch_size: int) -> float:
    return -(math.log(batch_size) - CLEAN_SPREAD / 2)


@dataclass
class ScanConfig(Config):
    target: Target = field(
        default="cls",
        metadata={"help": "read-out of the PVs: [CLS], [MASK], every token or a decoder's last token"},
    )
    sentences: int = field(
        default=320,
        metadata={
            "help": "clean sentences per epoch (the paper: 2000; 320 keeps a loop under a minute on 2 cores)"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "sentences per step; T_div follows from it"})
    # the CLI's default (``lmsanitator scan``/``search`` read it from here): the scans in the README and
    # benchmarks/RESULTS.md ran at 64; the experiments pin the 128 they were measured with
    max_length: int = field(default=64, metadata={"help": "tokens per prompted sentence (truncated beyond)"})
    prompt_length: int = field(default=7, metadata={"help": "soft-prompt vectors l_sp"})
    max_prompt_position: int = field(
        default=32, metadata={"help": "the prompt goes at a word position in [1, min(this, words)]"}
    )
    # The paper trains 4 epochs of 2000 sentences (~250 steps per fuzz loop); ours are 320 sentences
    # (10 steps). Clean models' loops stall well above T_div (-3.40) however long they run.
    epochs: int | None = field(
        default=None,
        metadata={
            "help": "epochs per fuzz loop (default: 3 in detection at lr 3e-3, 6 in search at lr 1e-3)"
        },
    )
    # Default (epochs - 1) // 2, the paper's "end of epoch 2 of 4"; 2 of 6 in search, where the end of
    # epoch 2 was too early (POR splade-tiny search: after epoch 3 of 6, 5 of 6 planted PVs in 20 loops;
    # after epoch 2, loops are abandoned at distance -0.4 > -T_L and the search stopped at 1 PV after 10
    # such loops in a row).
    abort_epoch: int | None = field(
        default=None,
        metadata={"help": "0-based epoch after which a loop with no PV is abandoned (default (epochs-1)//2)"},
    )
    early_accept: bool = field(
        default=True, metadata={"help": "stop a fuzz loop at the first epoch that passes T_L and T_div"}
    )
    loops: int = field(default=30, metadata={"help": "fuzz loops (fuzz seeds) to run at most"})
    t_l: float | None = field(
        default=None, metadata={"help": "distance threshold T_L (default 1.0 clean-std units; raw: 0.2/0.1)"}
    )
    t_div: float | None = field(
        default=None, metadata={"help": "diversity threshold T_div (default -(ln batch_size - 0.0197))"}
    )
    lr: float | None = field(
        default=None,
        metadata={"help": "soft-prompt learning rate after the adaptive boost (default: see the module doc)"},
    )
    lr_boost: float = field(default=100.0, metadata={"help": "adaptive lr: start at lr_boost x lr"})
    t_grad: float = field(
        default=5e-3, metadata={"help": "adaptive lr: the boost ends when the largest gradient exceeds this"}
    )
    lambda_distance: float = field(default=1.0, metadata={"help": "weight of the distance loss L_D"})
    lambda_diversity: float = field(default=1.0, metadata={"help": "weight of the diversity loss L_div"})
    lambda_path: float = field(default=0.5, metadata={"help": "weight lambda_P of the path loss L_P"})
    path_loss: bool = field(default=True, metadata={"help": "keep later loops away from PVs already found"})
    antipode_probe: bool = field(
        default=True,
        metadata={"help": "search mode: after each PV v a fuzz loop finds, one more loop pulled towards -v"},
    )
    lambda_probe: float = field(
        default=1.0, metadata={"help": "weight of the antipode probe's pull (MSE to -v, clean-std units)"}
    )
    adaptive_lr: bool = field(
        default=True, metadata={"help": "boost the lr until the gradient exceeds t_grad"}
    )
    range_factor: float = field(
        default=1.2, metadata={"help": "a legit soft prompt stays inside this x the embedding range"}
    )
    standardize: bool = field(
        default=True, metadata={"help": "measure losses in units of the clean outputs' per-dimension std"}
    )
    stop_at_first: bool | None = field(
        default=None, metadata={"help": "stop at the first legit PV (default: in detection mode only)"}
    )
    # Issue 19: after early acceptance the loop trains on the collapse (diversity) loss alone while the
    # batch's collapse still improves, so the PV is read where the batch collapses, not where the
    # distance loss has carried it past the PV (fuzz._settle). It runs only on a loop that already passed
    # T_L and T_div (a clean scan's loops rarely do); uniqueness and the clean evidence judge the settled PV.
    settle_epochs: int = field(
        default=SETTLE_EPOCHS,
        metadata={
            "help": "epochs after early acceptance on the collapse loss (plus settle_pull towards the "
            "clean outputs) while the diversity improves; 0: read the PV at acceptance"
        },
    )
    settle_pull: float = field(
        default=0.0,
        metadata={
            "help": "weight of a pull towards the clean outputs while settling (0: collapse loss only)"
        },
    )
    # Issue 19: a fine-tuned classifier's class direction passes T_L and T_div, but it sits in a cluster
    # the model already forms on clean sentences; a backdoor's PV does not (see scan.evidence).
    clean_evidence: bool = field(
        default=True,
        metadata={
            "help": "reject a PV whose nearest clean outputs the model already collapses (a class direction)"
        },
    )
    t_clean_div: float | None = field(
        default=None,
        metadata={
            "help": "the clean-evidence threshold: nearest clean outputs' diversity <= this rejects a PV "
            "(default -(ln batch_size - 0.25); off when t_div is set and this is not)"
        },
    )
    # Issue 19: a Wasserstein attacker keeps each triggered output's magnitudes near its clean output's,
    # so the batch collapses in direction but not to T_div (see fuzz._collapse_margins)
    t_spread: float | None = field(
        default=None,
        metadata={
            "help": "a loop that ends without passing T_div is still collapsed when its relative spread "
            "(batch variance / squared displacement, clean-std units) is below this (0: off; default: "
            "see the module doc; off when t_div is set and this is not)"
        },
    )
    # Issue 19 (see scan.observed): frequent-word triggers fire on the defence corpus itself
    observe: bool = field(
        default=True,
        metadata={
            "help": "before fuzzing, look for a PV the defence corpus already shows: a tight group of "
            "clean outputs that a word its sentences share reaches from other sentences"
        },
    )
    seed: int = field(default=0, metadata={"help": "first fuzz seed"})
    corpus_seed: int = field(default=0, metadata={"help": "which sentences, and where the prompt goes"})
    mode: Mode = field(default="detect", metadata={"help": "detection (is there a PV?) or search (every PV)"})
    # Same verdict and PV as one process: detection's loops are independent, results taken in seed order.
    workers: int = field(
        default=1,
        metadata={"help": "detection on a CPU: fuzz loops at once, each in a forked one-thread process"},
    )

    # ---- defaults that depend on other fields: the one place they are resolved --------------------------
    def default(self, name: str, bert_like: bool | None = None):
        """The value field ``name`` takes when it is not set. Mode-dependent fields (``MODE_DEFAULTS``)
        are resolved from it on construction; the thresholds ``t_l``, ``t_div`` and ``lr`` stay None in
        the config and are resolved per model family (``bert_like``) by :meth:`resolved`."""
        if name == "stop_at_first":
            return self.mode == "detect"
        if name == "epochs":
            return DEFAULT_EPOCHS[self.mode]
        if name == "abort_epoch":
            return (self.epochs - 1) // 2
        if name == "t_l":
            return STANDARDIZED_T_L if self.standardize else default_t_l(bert_like)
        if name == "t_div":
            return t_div_for(self.batch_size)
        if name == "t_clean_div":
            return t_clean_div_for(self.batch_size)
        if name == "t_spread":
            return T_SPREAD
        if name == "lr":
            return STANDARDIZED_LR[self.mode] if self.standardize else default_lr(bert_like, self.mode)
        return option_default(type(self), name)

    def _resolve_mode_defaults(self) -> None:
        if self.stop_at_first is None:
            self.stop_at_first = self.default("stop_at_first")
        if self.epochs is None:
            self.epochs = self.default("epochs")
        if self.abort_epoch is None and self.epochs >= 1:
            self.abort_epoch = self.default("abort_epoch")

    def changed(self) -> list[str]:
        """Fields set away from their default; a mode-dependent field counts as changed only when it
        differs from what the mode gives (``epochs=3`` in detection is the default)."""
        cls = type(self)
        return [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name)
            != (self.default(f.name) if f.name in MODE_DEFAULTS else option_default(cls, f.name))
        ]

    def check(self) -> None:
        # runs after the Literal options are checked (the mode-dependent defaults need a valid mode)
        self._resolve_mode_defaults()
        if self.batch_size < 2:
            raise LMSanitatorError("batch_size must be >= 2")
        if self.sentences < self.batch_size:
            raise LMSanitatorError(
                f"--sentences {self.sentences} is fewer than one batch ({self.batch_size})"
            )
        if self.prompt_length < 1:
            raise LMSanitatorError("prompt_length must be >= 1")
        if self.epochs < 1 or not 0 <= self.abort_epoch < self.epochs:
            raise LMSanitatorError("need epochs >= 1 and 0 <= abort_epoch < epochs")
        if self.loops < 1:
            raise LMSanitatorError("loops must be >= 1")
        if self.max_length < self.prompt_length + 8:
            raise LMSanitatorError("max_length too small for the soft prompt")
        for k in ("t_l", "lr"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise LMSanitatorError(f"{k} must be > 0, got {v}")
        if self.t_div is not None and self.t_div >= 0:
            raise LMSanitatorError("t_div is a negative entropy threshold, e.g. -3.446")
        if self.lambda_probe < 0:
            raise LMSanitatorError("lambda_probe must be >= 0")
        if self.range_factor < 1:
            raise LMSanitatorError("range_factor must be >= 1")
        if self.settle_epochs < 0:
            raise LMSanitatorError(f"settle_epochs must be >= 0, got {self.settle_epochs}")
        if self.t_clean_div is not None and self.t_clean_div >= 0:
            raise LMSanitatorError("t_clean_div is a negative entropy threshold, e.g. -3.216")
        if self.t_spread is not None and self.t_spread < 0:
            raise LMSanitatorError(f"t_spread must be >= 0 (0: off), got {self.t_spread}")
        if self.settle_pull < 0:
            raise LMSanitatorError(f"settle_pull must be >= 0, got {self.settle_pull}")
        if self.workers < 1:
            raise LMSanitatorError(f"workers must be >= 1, got {self.workers}")

    def _resolved_t_clean_div(self) -> float | None:
        """The clean-evidence threshold in force: None when switched off, or when T_div is set by hand
        and t_clean_div is not (a hand-set T_div is the whole collapse test, as before issue 19: the
        paper's rule and the ablations keep their meaning; the default pair is calibrated together)."""
        if not self.clean_evidence:
            return None
        if self.t_clean_div is not None:
            return self.t_clean_div
        return None if self.t_div is not None else self.default("t_clean_div")

    def _resolved_t_spread(self) -> float | None:
        """The relative-spread threshold in force (None: off), by the same logic as t_clean_div."""
        if self.t_spread is not None:
            return self.t_spread or None
        return None if self.t_div is not None else self.default("t_spread")

    def resolved(self, bert_like: bool) -> dict:
        """Thresholds actually used for a model family."""
        return {
            "t_l": self.t_l if self.t_l is not None else self.default("t_l", bert_like),
            "t_div": self.t_div if self.t_div is not None else self.default("t_div"),
            "t_clean_div": self._resolved_t_clean_div(),
            "t_spread": self._resolved_t_spread(),
            "lr": self.lr if self.lr is not None else self.default("lr", bert_like),
            "standardize": self.standardize,
            "lr_boost": self.lr_boost,
            "t_grad": self.t_grad,
            "lambda_path": self.lambda_path,
            "range_factor": self.range_factor,
        }
