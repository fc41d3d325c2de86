"""The PV monitor (LMSanitator step III, post-monitor).

The PV set is reduced to sign tuples once; an input's *match rate* is the largest share of
dimensions whose sign agrees with one PV (Eq. 9 divided by d). The features come from the same
forward pass that produces the prediction, so monitoring costs one matrix product, not a pass.
Token-classification targets give one feature row per word piece: an input's match with a PV is
the mean over its rows (a task-agnostic NER backdoor moves every token's output; the mean keeps a
single odd token of a clean sentence from flagging it).

Mixtures (ours, not the paper's): an input carrying two *different* triggers is sent between their
two PVs, and the paper's per-PV match can miss it (POR MiniLM, six triggers, two of them back to
back: half of such inputs matched neither PV at 0.8 d, and the other half only just). Where the two
PVs agree in sign, though, both triggers push the same way, so the mixed output agrees with them
there almost everywhere, while a clean output agrees on about the share it agrees with one PV. So
each pair of PVs adds a *mixture column*: the share of the pair's agreeing dimensions on which the
output's sign agrees with them, flagged above ``t_mixture``. The columns of the match matrix are the
PVs first, then the pairs (``columns`` names them); a flagged mixture goes through trigger removal as
a flagged PV does. Pairs that agree on fewer than ``MIN_MIXTURE_SHARE`` of the dimensions (near
antipodes, as the scan's antipode probe finds) add no column: too few dimensions to test.

Why ``t_mixture`` = 0.95 (measured on that POR MiniLM, PVs from ``lmsanitator search``, P-tuning v2
victim, 1000 clean test tweets; ``results/guard-phrase``): triggered inputs, two triggers back to
back included, read 0.99-1.0 on their pair's column; no clean tweet reaches 0.94 on a mixture column
without also matching a PV above 0.8 d (at 0.90, 5 of 1000 would be flagged by a mixture alone).
A pair column reads about d / 2 dimensions, so its clean spread is wider than a PV's: calibration
(``calibrate``) raises it per column where clean inputs come close.
"""

from __future__ import annotations

import torch

from lmsanitator.core.errors import LMSanitatorError

DEFAULT_T_MATCH = 0.8  # share of the hidden size (the paper's 0.8 d)
DEFAULT_T_MIXTURE = 0.95  # share of a PV pair's agreeing dimensions
MIN_MIXTURE_SHARE = 0.25  # a pair agreeing on fewer dimensions adds no mixture column


class PVMonitor:
    """Sign tuples of a PV set and the match-rate threshold ``t_match`` (a share of d, in (0.5, 1]);
    with ``t_mixture`` (default), a mixture column per pair of PVs (see the module docstring)."""

    def __init__(
        self, pvs: torch.Tensor, t_match: float = DEFAULT_T_MATCH, t_mixture: float | None = DEFAULT_T_MIXTURE
    ):
        if pvs.ndim != 2 or pvs.shape[0] < 1:
            raise LMSanitatorError("the PV set is empty: nothing to monitor")
        if not 0.5 < t_match <= 1.0:
            raise LMSanitatorError(f"t_match is a share of the hidden size in (0.5, 1], got {t_match}")
        if t_mixture is not None and not 0.5 < t_mixture <= 1.0:
            raise LMSanitatorError(
                f"t_mixture is a share of a PV pair's dimensions in (0.5, 1], got {t_mixture}"
            )
        self.t_match, self.t_mixture = float(t_match), t_mixture
        self.hidden_size = int(pvs.shape[1])
        self.n_pvs = int(pvs.shape[0])
        pos = (pvs.detach().float() >= 0).float()
        masks = [torch.ones_like(p) for p in pos]
        targets = list(pos)
        self.columns = [str(i) for i in range(self.n_pvs)]
        if t_mixture is not None:
            for i in range(self.n_pvs):
                for j in range(i + 1, self.n_pvs):
                    agree = (pos[i] == pos[j]).float()
                    if float(agree.mean()) >= MIN_MIXTURE_SHARE:
                        masks.append(agree)
                        targets.append(pos[i])
                        self.columns.append(f"{i}+{j}")
        self._mask = torch.stack(masks)  # columns x d: the dimensions each column reads
        self._pos = torch.stack(targets) * self._mask  # the sign each column expects there (1: >= 0)
        self._neg_count = (self._mask - self._pos).sum(dim=1)
        self._size = self._mask.sum(dim=1)
        self.thresholds = torch.tensor(
            [self.t_match] * self.n_pvs + [t_mixture or 1.0] * (len(self.columns) - self.n_pvs)
        )
        self.calibrated = False

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def to(self, device) -> PVMonitor:
        for name in ("_mask", "_pos", "_neg_count", "_size"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each column's expected signs (+1 / -1) and the 0/1 mask of the dimensions it reads."""
        return self._pos * 2 - self._mask, self._mask

    def match_matrix(self, features: torch.Tensor, rows: torch.Tensor, n_inputs: int) -> torch.Tensor:
        """Sign match of each input with each column (inputs x columns: PVs, then mixtures); token
        targets: mean over the input's rows."""
        if features.shape[-1] != self.hidden_size:
            raise LMSanitatorError(f"features have width {features.shape[-1]}, the PV set {self.hidden_size}")
        a = (features.detach().float() >= 0).float()
        # agreements on a column's dimensions m = a.(m p) + (1-a).(m (1-p)) = 2 a.(m p) - a.m + sum(m (1-p))
        m = (2 * (a @ self._pos.T) - a @ self._mask.T + self._neg_count.unsqueeze(0)) / self._size.unsqueeze(
            0
        )
        if m.shape[0] == n_inputs and torch.equal(rows, torch.arange(n_inputs, device=rows.device)):
            return m
        s = m.new_zeros(n_inputs, m.shape[1]).index_add(0, rows, m)
        c = torch.bincount(rows, minlength=n_inputs).clamp_min(1).to(m.dtype).unsqueeze(1)
        return s / c

    def pv_rates(self, matrix: torch.Tensor) -> torch.Tensor:
        """Match rate of each input (the paper's): its best PV's share of agreeing signs."""
        return matrix[:, : self.n_pvs].max(dim=1).values

    def match_rates(self, features: torch.Tensor, rows: torch.Tensor, n_inputs: int) -> torch.Tensor:
        """Match rate of each input: the best PV's share of agreeing signs."""
        return self.pv_rates(self.match_matrix(features, rows, n_inputs))

    def flag(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inputs whose match with some column exceeds its threshold (``t_match`` for a PV,
        ``t_mixture`` for a pair, unless calibrated)."""
        return (matrix > self.thresholds.to(matrix.device).unsqueeze(0)).any(dim=1)

    def calibrate(self, clean_matrix: torch.Tensor, frr: float) -> torch.Tensor:
        """Raise each column's threshold to the ``1 - frr`` quantile of the clean inputs' match rates
        with it (never below ``t_match`` / ``t_mixture``). The defender's clean text is all this uses.
        Small hidden sizes and PVs near the clean outputs give clean inputs 0.8 d matches by chance
        (BToP SPLADE-tiny, d = 128: 10% of clean tweets). A per-column quantile, not the maximum: a
        few "clean" inputs carry natural near-triggers (tweets with t.co links match a BToP PV at
        1.0) and must not switch a PV off."""
        if not 0 <= frr < 1:
            raise LMSanitatorError(f"calibration FRR must be in [0, 1), got {frr}")
        if clean_matrix.shape[0] < 1:
            raise LMSanitatorError("calibration needs at least one clean input")
        q = 1 - frr
        per_col = torch.quantile(clean_matrix.float().cpu(), q, dim=0, interpolation="higher")
        floor = torch.tensor(
            [self.t_match] * self.n_pvs + [self.t_mixture or 1.0] * (self.n_columns - self.n_pvs)
        )
        self.thresholds = torch.maximum(per_col, floor)
        self.calibrated = True
        return self.thresholds
