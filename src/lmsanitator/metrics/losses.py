"""The scan's and the adaptive attacks' losses over a batch of output features.

LMSanitator Sec. IV-B (the scan) and App. M (the adaptive attacks).
"""

from __future__ import annotations

import torch


def collapse_diversity(features: torch.Tensor, batch: int = 32) -> float | None:
    """LMSanitator's diversity loss (-:func:`batch_entropy`) averaged over full batches of ``batch`` rows."""
    n = features.shape[0] // batch
    if n == 0:
        return None
    return round(sum(-float(batch_entropy(features[i * batch : (i + 1) * batch])) for i in range(n)) / n, 4)


def batch_entropy(features: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the entropy of the softmax over the batch axis.

    ``ln(batch)`` when every row is the same (collapsed outputs); LMSanitator's diversity loss is
    its negative, and the scattering adaptive attack minimises it.
    """
    p = torch.softmax(features.float().T, dim=1)  # hidden x batch
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean()


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Wasserstein-1 distance between the value distributions of ``exp(a_i)`` and ``exp(b_i)``, row-wise mean.

    Appendix M of the paper: features are exponentiated to be positive, then compared with a
    Wasserstein distance; in 1-D it is the mean absolute difference of the sorted values.
    """
    n = min(len(a), len(b))
    ea, _ = torch.sort(torch.exp(a[:n].float()), dim=1)
    eb, _ = torch.sort(torch.exp(b[:n].float()), dim=1)
    return (ea - eb).abs().mean()
