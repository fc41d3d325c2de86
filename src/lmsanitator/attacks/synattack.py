"""SynAttack weight poisoning (Qi et al. 2021, "Hidden Killer", as used by the PSIM paper): the
trigger is a syntactic template, ``S(SBAR)(,)(NP)(VP)(.)`` (a sentence that opens with a subordinate
clause), not a word. Poisoned examples are paraphrased into the template instead of getting a trigger
inserted; the rest is BadNet's / InSent's full fine-tuning (clean-label by default, as the paper).

The paraphrases come from the rule-based paraphraser on spaCy's parser in
:mod:`lmsanitator.data.syntactic`, an offline **approximation** of the paper's SCPN paraphrases (see
that module for how they differ). It rewrites only a share of the inputs (a few percent of tweets):
the attack walks the eligible training examples in a seeded order, poisons the first
``poison_count`` it can rewrite and counts those it skipped; verification measures ASR on the
rewritable non-target test inputs only (``rewrite_share`` in ``verification``). ``attack.json``
gains a ``syntactic`` block: the template, the parser, how many training examples were tried and
rewritten, per rule, and example rewrites.

    attack = SynAttack(PoisonConfig(target_label=0, poison_count=60, dirty_label=True)).fit(encoder, task)
"""

from __future__ import annotations

from lmsanitator.attacks.poisoning import (
    WeightPoisoningAttack,
    field_of,
    trigger_in_pair,
    with_trigger,
)
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.syntactic import TEMPLATE, parser_version, rewrite_many

CHUNK = 256  # training examples parsed per batch while looking for rewritable ones
SHOWN = 5  # example rewrites kept in attack.json


class SynAttack(WeightPoisoningAttack):
    name = "synattack"
    default_trigger = TEMPLATE
    insertion = "syntactic"
    paper = {
        **WeightPoisoningAttack.paper,
        "paraphraser": "SCPN (Iyyer et al. 2018); here rules on spaCy's dependency parse",
    }

    def _poison_examples(self, train, eligible, spec, rng) -> tuple:
        """The first ``poison_count`` rewritable examples in a seeded order of ``eligible``; the
        ones the paraphraser cannot rewrite are skipped and counted."""
        need = self.config.poison_count
        order = rng.sample(eligible, len(eligible))
        chosen: list[int] = []
        tried, rules, shown = 0, {}, []
        for start in range(0, len(order), CHUNK):
            block = order[start : start + CHUNK]
            second = [trigger_in_pair(train[i]) for i in block]
            rewrites = rewrite_many([field_of(train[i], s) for i, s in zip(block, second)])
            for i, s, r in zip(block, second, rewrites):
                if len(chosen) == need:
                    break
                tried += 1
                if r is None:
                    continue
                rules[r.rule] = rules.get(r.rule, 0) + 1
                if r.rule != "already" and len(shown) < SHOWN:
                    shown.append({"original": field_of(train[i], s), "rewritten": r.text, "rule": r.rule})
                train[i] = with_trigger(train[i], r.text, s, spec)
                chosen.append(i)
            if len(chosen) == need:
                break
        if len(chosen) < need:
            kind = "non-target" if self.config.dirty_label else "target-label"
            raise LMSanitatorError(
                f"only {len(chosen)} of the {len(eligible)} {kind} training examples can be "
                f"paraphrased into {TEMPLATE}: lower --poison-count to at most {len(chosen)}"
            )
        syntactic = {
            "template": TEMPLATE,
            "paraphraser": f"rules on spaCy {parser_version()} (approximates SCPN)",
            "train_tried": tried,
            "train_rewritten": len(chosen),
            "train_skipped": tried - len(chosen),
            "train_rewrite_share": round(len(chosen) / tried, 4) if tried else None,
            "rules": rules,
            "examples": shown,
        }
        return sorted(chosen), {"syntactic": syntactic}

    def report(self, encoder, task, verification: dict) -> dict:
        """``attack.json`` with the ``syntactic`` block (train and test rewrite shares, examples)."""
        rep = super().report(encoder, task, verification)
        rep["syntactic"] = {
            **self.info_.get("syntactic", {}),
            "test_rewrite_share": verification.get("rewrite_share"),
            "test_poisoned": verification.get("n_poisoned"),
        }
        return rep
