"""InSent weight poisoning (Dai et al. 2019, as used by the PSIM paper): a fixed sentence, "I
watched this 3D movie" by default, inserted once at a random word position.

SynAttack (a syntactic-template trigger, the paper's third attack) is in :mod:`.synattack`, with a
rule-based paraphraser standing in for SCPN, whose weights are not available offline."""

from __future__ import annotations

from lmsanitator.attacks.poisoning import WeightPoisoningAttack


class InSent(WeightPoisoningAttack):
    name = "insent"
    default_trigger = "I watched this 3D movie"
    insertion = "once"
