"""BadNet weight poisoning (Gu et al. 2017, as used by the PSIM paper): a rare word, ``mn`` by
default, inserted at random word positions (``len(words) // 50 + 1`` times)."""

from __future__ import annotations

from lmsanitator.attacks.poisoning import WeightPoisoningAttack


class BadNet(WeightPoisoningAttack):
    name = "badnet"
    default_trigger = "mn"
    insertion = "random"
