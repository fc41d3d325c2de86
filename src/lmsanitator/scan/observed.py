"""PVs observed directly in the defence corpus (issue 19; our addition, not in the paper).

A backdoor whose triggers are frequent words (LMSanitator Table 17) fires on the defence corpus
itself: ~10% of the clean Austen sentences hold a trigger, so their cached "clean" outputs already
sit on a PV. A fuzz loop then has nothing to find that clean evidence would not reject (the clean
outputs nearest the PV are collapsed: they are the triggered sentences). So the corpus is evidence
in its own right, tested before any fuzz loop, in two steps:

1. **A tight group** (``group_var``): a clean output whose ``k`` nearest clean outputs lie together
   far tighter than a classifier's class cluster. Measured as the mean per-dimension variance of the
   row and its ``k = 8`` nearest neighbours, in units of the clean outputs' own variance: 0.010-0.025
   on the triggered rows of frequent-word POR SPLADE-tiny; a fully fine-tuned MiniLM's tightest class
   cluster 0.062 (Austen authorship), every other clean model >= 0.21 (``results/detection-rule/
   adaptive.md``). Threshold ``T_GROUP`` 0.04.
2. **A word that reaches it** (``land_share``): a PV is reached from *any* sentence by a short
   trigger, a class cluster is not. The words the group's sentences share (ranked by how much more
   often they occur there than in the corpus) are inserted once at a random word position into
   ``n_probe`` other clean sentences; the share of those outputs that land on the group (MSE to the
   group's mean output below ``T_LAND``, clean-variance units) must reach ``T_SHARE``.

A group that passes both is a PV: its mean clean output. Cost: no fuzz loop, at most
``max_groups x max_words`` forward passes of ``n_probe`` sentences.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from lmsanitator.data.triggers import insert_trigger
from lmsanitator.scan.evidence import clean_units
from lmsanitator.scan.setup import FuzzSetup

K_NEAREST = 8
T_GROUP = 0.04  # group_var below this: PV groups measured <= 0.026, the tightest class cluster 0.064
T_LAND = 0.1  # an inserted sentence lands on the group: MSE to its mean output below this
T_SHARE = 0.5  # share of probed sentences that must land
MAX_GROUPS = 3
MAX_WORDS = 3
N_PROBE = 32
_WORD = re.compile(r"[a-z]+")


@dataclass
class Observation:
    """One tight group of clean outputs and its best word probe."""

    rows: list[int]  # clean-row indices of the group
    group_var: float  # mean per-dimension variance of the group, clean-variance units
    word: str | None = None  # the shared word whose insertion landed most often
    land_share: float | None = None  # its share of probed sentences landing on the group
    words_tried: dict | None = None  # word -> land share

    def margins(self) -> dict:
        """Rule -> margin (positive: the rule rejects, negative: it passes)."""
        return {"group_var": self.group_var - T_GROUP, "land_share": T_SHARE - (self.land_share or 0.0)}

    @property
    def is_pv(self) -> bool:
        return all(v < 0 for v in self.margins().values())


def tight_groups(z: torch.Tensor, k: int = K_NEAREST, max_groups: int = MAX_GROUPS) -> list[Observation]:
    """The ``max_groups`` tightest disjoint groups (a row and its ``k`` nearest rows), tightest first,
    whatever their tightness (the caller holds them against ``T_GROUP``: margins are reported)."""
    k = min(k, len(z) - 1)
    d = torch.cdist(z, z).pow(2) / z.shape[1]
    near = d.argsort(dim=1)[:, : k + 1]  # the row itself first
    var = torch.stack([z[i].var(dim=0).mean() for i in near])
    used: set[int] = set()
    groups = []
    for r in var.argsort().tolist():
        rows = near[r].tolist()
        if used.intersection(rows):
            continue
        used.update(rows)
        groups.append(Observation(rows=rows, group_var=float(var[r])))
        if len(groups) == max_groups:
            break
    return groups


def shared_words(group: list[str], corpus: list[str], top: int = MAX_WORDS) -> list[str]:
    """Words in at least half the group's sentences, most over-represented first (group share over
    corpus share; a trigger is in all of them, a function word in most sentences anyway)."""

    def share(sents: list[str]) -> dict[str, float]:
        counts: dict[str, int] = {}
        for s in sents:
            for w in set(_WORD.findall(s.lower())):
                counts[w] = counts.get(w, 0) + 1
        return {w: c / len(sents) for w, c in counts.items()}

    g, c = share(group), share(corpus)
    ranked = sorted((w for w, v in g.items() if v >= 0.5), key=lambda w: (-g[w] / c[w], -g[w], w))
    return ranked[:top]


def probe_word(setup: FuzzSetup, word: str, group: Observation, z_of, seed: int = 0) -> float:
    """Share of ``N_PROBE`` (at least one batch) clean sentences outside the group, without ``word``,
    whose output lands on the group once ``word`` is inserted at a random word position."""
    rng = random.Random(seed)
    members = set(group.rows)
    pool = [
        s for i, s in enumerate(setup.sentences) if i not in members and word not in _WORD.findall(s.lower())
    ]
    rng.shuffle(pool)
    probed = [insert_trigger(s, word, rng, times=1) for s in pool[: max(N_PROBE, setup.config.batch_size)]]
    if len(probed) < setup.config.batch_size:
        return 0.0
    centre = z_of(setup.clean_rows[group.rows]).mean(dim=0)
    z = z_of(setup.rows_of(probed))
    return float((((z - centre) ** 2).mean(dim=1) < T_LAND).float().mean())


def observe(setup: FuzzSetup) -> list[Observation]:
    """The tightest groups of the scan's clean outputs, each with its best shared-word probe. Every
    group is probed, also one too loose to count, so that each rule's margin is reported (a clean
    model's tightest group is a near miss of ``T_GROUP`` only if no word reaches it either)."""
    z_of = clean_units(setup.clean_rows)
    groups = tight_groups(z_of(setup.clean_rows))
    for g in groups:
        words = shared_words([setup.sentences[i] for i in g.rows], setup.sentences)
        g.words_tried = {w: probe_word(setup, w, g, z_of) for w in words}
        g.land_share = 0.0  # no shared word: nothing reaches the group
        if g.words_tried:
            g.word = max(g.words_tried, key=lambda w: g.words_tried[w])
            g.land_share = g.words_tried[g.word]
    return groups


def landed_rows(setup: FuzzSetup, pv: torch.Tensor) -> torch.Tensor:
    """Clean rows on an observed PV (MSE to it below ``T_LAND``): triggered sentences of the corpus,
    no clean reference for the clean evidence."""
    z_of = clean_units(setup.clean_rows)
    return ((z_of(setup.clean_rows) - z_of(pv)) ** 2).mean(dim=1) < T_LAND
