"""The PV monitor (LMSanitator step III, post-monitor).

The PV set is reduced to sign tuples once; an input's *match rate* is the largest share of
dimensions whose sign agrees with one PV (Eq. 9 divided by d). The features come from the same
forward pass that produces the prediction, so monitoring costs one matrix product, not a pass.
Token-classification targets give one feature row per word piece: an input's match rate is the
mean over its rows of the per-row rate (a task-agnostic NER backdoor moves every token's output;
the mean keeps a single odd token of a clean sentence from flagging it).
"""

from __future__ import annotations

import torch

from lmsanitator.errors import LMSanitatorError

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
        # agreements = pos(f) . pos(pv) + (1 - pos(f)) . (1 - pos(pv)); precompute both halves as one matrix
        self._pos = pos
        self._neg_count = (1 - pos).sum(dim=1)

    def to(self, device) -> "PVMonitor":
        self._pos = self._pos.to(device)
        self._neg_count = self._neg_count.to(device)
        return self

    def row_rates(self, features: torch.Tensor) -> torch.Tensor:
        """Best sign match of each feature row over the PVs (rows)."""
        if features.shape[-1] != self.hidden_size:
            raise LMSanitatorError(f"features have width {features.shape[-1]}, the PV set {self.hidden_size}")
        a = (features.detach().float() >= 0).float()
        # a.pv + (1-a).(1-pv) = 2 a.pv - sum(a) + sum(1-pv)
        agree = 2 * (a @ self._pos.T) - a.sum(dim=1, keepdim=True) + self._neg_count.unsqueeze(0)
        return agree.max(dim=1).values / self.hidden_size

    def match_rates(self, features: torch.Tensor, rows: torch.Tensor, n_inputs: int) -> torch.Tensor:
        """Match rate of each input: its row's rate, or the mean over its rows (token targets)."""
        r = self.row_rates(features)
        if r.shape[0] == n_inputs and torch.equal(rows, torch.arange(n_inputs, device=rows.device)):
            return r
        s = r.new_zeros(n_inputs).index_add(0, rows, r)
        c = torch.bincount(rows, minlength=n_inputs).clamp_min(1).to(r.dtype)
        return s / c

    def flagged(self, rates: torch.Tensor) -> torch.Tensor:
        return rates > self.t_match
