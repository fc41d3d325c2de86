"""Clean evidence against a candidate PV (issue 19): does the model already collapse the clean
sentences nearest to it?

A fuzz loop's collapse test (T_L, T_div) cannot tell a PV from a *class direction*: a fully
fine-tuned classifier gathers its [CLS] outputs into a few tight class clusters, and a soft prompt
can push a whole batch into (and beyond) one of them. The two differ in the model's own clean
behaviour. A backdoor's PV is reached only through its trigger: the clean defence sentences nearest
to it are as spread as any clean sentences. A class direction is where the model already gathers
clean sentences: the clean outputs nearest to it are collapsed *without* a soft prompt.

:func:`clean_evidence` measures that on the scan's cached clean outputs (one row per sentence), in
units of their per-dimension std (the units the diversity loss is measured in by default):

* ``nn_diversity``: the diversity loss of the ``batch`` clean outputs nearest to the PV (the rule's
  statistic, compared with ``ScanConfig.t_clean_div``). For rows whose per-dimension spread is
  ``s^2`` times the clean outputs' overall spread it is about ``-(ln batch - s^2 / 2)``: -2.97 for
  sentences drawn at random (s^2 = 1), -3.22 at half the spread (the default threshold -3.2).
  Measured (``results/detection-rule/``): the accepted PVs of POR SPLADE-tiny -2.899 and POR MiniLM
  -2.906 (margin 0.31); the false positive of a MiniLM fully fine-tuned on Austen authorship -3.374
  and -3.416 (margin 0.16); near misses of clean loops (never accepted) -2.88 to -2.95 on a MiniLM
  fine-tuned on WordNet topics, -3.11 to -3.19 on the bundled MiniLM.
* ``nn_mse``: the MSE of the PV to its nearest clean output,
* ``clean_share``: the share of clean outputs whose signs agree with the PV's in >= ``t_match`` of
  the dimensions (raw signs and T_match 0.8, as the guard's monitor reads them: the clean inputs the
  guard would flag with this PV; 0 on every candidate measured, class directions included, so it is
  reported, not used),
* ``max_match``: the best-matching clean sentence's match rate.
"""

from __future__ import annotations

import torch

from lmsanitator.metrics import batch_entropy, sign_match

DEFAULT_T_MATCH = 0.8  # the guard's T_match (guard.monitor.DEFAULT_T_MATCH; scan may not import guard)


def clean_units(clean: torch.Tensor):
    """``z(f)``: rows ``f`` in units of the clean rows' own per-dimension std (centred on their mean),
    on the CPU in float32, whatever the scan's ``standardize``: the clean evidence and the observed
    groups (:mod:`lmsanitator.scan.observed`) are about spread relative to the clean outputs."""
    clean = clean.float().cpu()
    mean, std = clean.mean(dim=0), clean.std(dim=0).clamp_min(1e-6)
    return lambda f: (f.float().cpu() - mean) / std


def clean_evidence(
    pv: torch.Tensor, clean: torch.Tensor, batch: int, t_match: float = DEFAULT_T_MATCH
) -> dict:
    """The statistics above for one candidate ``pv`` against the clean outputs ``clean`` (rows; both
    in the model's units). Distances and diversity are taken in units of the clean rows' own
    per-dimension std, whatever the scan's ``standardize`` (the rule is about relative spread)."""
    clean, pv = clean.float().cpu(), pv.float().cpu()
    m = sign_match(clean, pv[None])[:, 0]
    z_of = clean_units(clean)
    z, zv = z_of(clean), z_of(pv)
    d = ((z - zv) ** 2).mean(dim=1)
    near = z[d.argsort()[: min(batch, len(z))]]
    return {
        "nn_diversity": -float(batch_entropy(near)),
        "nn_mse": float(d.min()),
        "clean_share": float((m >= t_match).float().mean()),
        "max_match": float(m.max()),
    }
