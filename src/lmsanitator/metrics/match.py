"""Sign agreement between output features and PVs: the match rate of the guard and of PV recovery."""

from __future__ import annotations

import torch


def sign_match(features: torch.Tensor, pvs: torch.Tensor) -> torch.Tensor:
    """Share of dimensions whose sign agrees (``>= 0`` counts as +), rows x PVs."""
    a = (features >= 0).float()
    b = (pvs >= 0).float()
    d = features.shape[-1]
    # agreements = both + or both -
    return (a @ b.T + (1 - a) @ (1 - b).T) / d
