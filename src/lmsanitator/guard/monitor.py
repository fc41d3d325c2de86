"""The PV monitor (LMSanitator step III, post-monitor).

The PV set is reduced to sign tuples once; an input's *match rate* is the largest share of
dimensions whose sign agrees with one PV (Eq. 9 divided by d). The features come from the same
forward pass that produces the prediction, so monitoring costs one matrix product, not a pass.
Token-classification targets give one feature row per word piece: an input's match with a PV is
the mean over its rows (a task-agnostic NER backdoor moves every token's output; the mean keeps a
single odd token of a clean sentence from flagging it).
"""

from __future__ import annotations

import torch

from lmsanitator.core.errors import LMSanitatorError

DEFAULT_T_MATCH = 0.8  # share of the hidden size (the paper's 0.8 d)


class PVMonitor:
    """Sign tuples of a PV set and the match-rate threshold ``t_match`` (a share of d, in (0.5, 1])."""

    def __init__(self, pvs: torch.Tensor, t_match: float = DEFAULT_T_MATCH):
        if pvs.ndim != 2 or pvs.shape[0] < 1:
            raise LMSanitatorError("the PV set is empty: nothing to monitor")
        if not 0.5 < t_match <= 1.0:
            raise LMSanitatorError(f"t_match is a share of the hidden size in (0.5, 1], got {t_match}")
        self.t_match = float(t_match)
        self.hidden_size = int(pvs.shape[1])
        pos = (pvs.detach().float() >= 0).float()
        self._pos = pos
        self._neg_count = (1 - pos).sum(dim=1)
        self.thresholds = torch.full((pvs.shape[0],), self.t_match)
        self.calibrated = False

    def to(self, device) -> PVMonitor:
        self._pos = self._pos.to(device)
        self._neg_count = self._neg_count.to(device)
        return self

    def match_matrix(self, features: torch.Tensor, rows: torch.Tensor, n_inputs: int) -> torch.Tensor:
        """Sign match of each input with each PV (inputs x PVs); token targets: mean over the input's rows."""
        if features.shape[-1] != self.hidden_size:
            raise LMSanitatorError(f"features have width {features.shape[-1]}, the PV set {self.hidden_size}")
        a = (features.detach().float() >= 0).float()
        # agreements = a.pv + (1-a).(1-pv) = 2 a.pv - sum(a) + sum(1-pv)
        m = (
            2 * (a @ self._pos.T) - a.sum(dim=1, keepdim=True) + self._neg_count.unsqueeze(0)
        ) / self.hidden_size
        if m.shape[0] == n_inputs and torch.equal(rows, torch.arange(n_inputs, device=rows.device)):
            return m
        s = m.new_zeros(n_inputs, m.shape[1]).index_add(0, rows, m)
        c = torch.bincount(rows, minlength=n_inputs).clamp_min(1).to(m.dtype).unsqueeze(1)
        return s / c

    def match_rates(self, features: torch.Tensor, rows: torch.Tensor, n_inputs: int) -> torch.Tensor:
        """Match rate of each input: the best PV's share of agreeing signs."""
        return self.match_matrix(features, rows, n_inputs).max(dim=1).values

    def flag(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inputs whose match with some PV exceeds that PV's threshold (``t_match`` unless calibrated)."""
        return (matrix > self.thresholds.to(matrix.device).unsqueeze(0)).any(dim=1)

    def calibrate(self, clean_matrix: torch.Tensor, frr: float) -> torch.Tensor:
        """Raise each PV's threshold to the ``1 - frr`` quantile of the clean inputs' match rates with
        it (never below ``t_match``). The defender's clean text is all this uses. Small hidden sizes
        and PVs near the clean outputs give clean inputs 0.8 d matches by chance (BToP SPLADE-tiny,
        d = 128: 10% of clean tweets). A per-PV quantile, not the maximum: a few "clean" inputs
        carry natural near-triggers (tweets with t.co links match a BToP PV at 1.0) and must not
        switch a PV off."""
        if not 0 <= frr < 1:
            raise LMSanitatorError(f"calibration FRR must be in [0, 1), got {frr}")
        if clean_matrix.shape[0] < 1:
            raise LMSanitatorError("calibration needs at least one clean input")
        q = 1 - frr
        per_pv = torch.quantile(clean_matrix.float().cpu(), q, dim=0, interpolation="higher")
        self.thresholds = torch.maximum(per_pv, torch.full_like(per_pv, self.t_match))
        self.calibrated = True
        return self.thresholds
