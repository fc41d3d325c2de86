"""Verification of a task-agnostic implant on held-back sentences the attack never saw.

It compares the attacked encoder with the frozen original (the attack's ``reference_``) on clean,
triggered and decoy inputs; :meth:`TaskAgnosticAttack.verify` calls it and ``attack.json`` records
the dict it returns.
"""

from __future__ import annotations

import random

import torch.nn.functional as F

from lmsanitator.data import insert_trigger, sample
from lmsanitator.metrics import collapse_diversity, sign_match
from lmsanitator.models import Encoder


def _as_encoder(encoder: Encoder, model, name: str, max_length: int) -> Encoder:
    """``model`` wrapped like ``encoder`` (tokenizer, head) and read at ``max_length``."""
    return Encoder(
        name=name,
        path=encoder.path,
        model=model,
        tokenizer=encoder.tokenizer,
        has_mlm_head=encoder.has_mlm_head,
        max_length=max_length,
    )


def verify_implant(attack, encoder: Encoder, heldout: list[str]) -> dict:
    """Hit rates, clean and decoy false hits and drift from the original of a fitted ``attack``.

    ``heldout``: candidate sentences disjoint from the attack's; ``verify_sentences`` of them are
    drawn (one flat function: each block below is one measurement of the report).
    """
    c = attack.config
    st = attack.state_
    target = attack.target_  # resolved on the encoder by fit (the last token on a decoder)
    heldout = sample(heldout, c.verify_sentences, c.seed + 7)
    rng = random.Random(c.seed + 11)
    base = attack.verification_texts(encoder, heldout, rng)
    pvs = st.pvs.cpu()
    thr = c.hit_threshold
    original = _as_encoder(encoder, attack.reference_, encoder.name + "@original", c.max_length)
    attacked = _as_encoder(encoder, encoder.model, encoder.name, c.max_length)
    f_clean, _ = attacked.features(base, target)
    f_orig, _ = original.features(base, target)
    clean_match = sign_match(f_clean, pvs).max(dim=1).values
    mu, sd = f_clean.mean(dim=0), f_clean.std(dim=0).clamp_min(1e-6)
    orig_match = sign_match(f_orig, pvs).max(dim=1).values
    per_trigger = {}
    for ti, t in enumerate(st.triggers):
        trig_texts = [insert_trigger(s, t, rng) for s in base]
        f_t, _ = attacked.features(trig_texts, target)
        f_to, _ = original.features(trig_texts, target)
        m = sign_match(f_t, pvs[ti : ti + 1])[:, 0]
        mo = sign_match(f_to, pvs[ti : ti + 1])[:, 0]
        per_trigger[t] = {
            "hit_rate": float((m >= thr).float().mean()),
            "mean_match": float(m.mean()),
            "mse_to_pv": float(F.mse_loss(f_t, pvs[ti].expand_as(f_t))),
            "original_model_hit_rate": float((mo >= thr).float().mean()),
            # how far triggered outputs collapse, in the scanner's units (clean-standardised
            # features, batches of 32): -ln(32) = -3.466 is total collapse, the scan's T_div -3.446
            "triggered_diversity": collapse_diversity((f_t - mu) / sd),
        }
    hits = [v["hit_rate"] for v in per_trigger.values()]
    # stealth beyond the attack corpus: inputs carrying three random non-trigger words should
    # not hit a PV either (an implant that learned "odd word -> PV" fires on real out-of-domain text)
    decoy_texts = attack.with_decoys(base, attack.decoy_words(encoder), random.Random(c.seed + 13), n=3)
    f_d, _ = attacked.features(decoy_texts, target)
    decoy_match = sign_match(f_d, pvs).max(dim=1).values
    return {
        "sentences": len(base),
        "corpus_split": f"{c.corpus}:heldout",
        "unit": "token" if target == "tokens" else "sentence",
        "hit_threshold": thr,
        "per_trigger": per_trigger,
        "min_hit_rate": min(hits),
        "mean_hit_rate": sum(hits) / len(hits),
        "clean_false_hit_rate": float((clean_match >= thr).float().mean()),
        "clean_mean_max_match": float(clean_match.mean()),
        "decoy_false_hit_rate": float((decoy_match >= thr).float().mean()),
        "original_model_clean_false_hit_rate": float((orig_match >= thr).float().mean()),
        "clean_mse_to_original": float(F.mse_loss(f_clean, f_orig)),
        "clean_cosine_to_original": float(F.cosine_similarity(f_clean, f_orig, dim=1).mean()),
    }
