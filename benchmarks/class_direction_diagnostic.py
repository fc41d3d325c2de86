"""Diagnostic, not a defence: where does the detection scan's first accepted PV sit relative to the
model's own clean outputs? A class direction of a fine-tuned classifier is a place the model already
sends some clean sentences; a planted PV is not. Prints one JSON line per model.

    python benchmarks/class_direction_diagnostic.py MODEL TARGET [MODEL TARGET ...]
    (MODEL: a bundled name or a folder, e.g. results/model-cache/<hash>; TARGET: cls or mask)

The scan runs with the detection experiments' settings (``experiments.recipes.mine``, 30 loops,
austen defence split); the clean outputs are 400 held-out sentences (a [MASK] inserted at a random
word for the mask read-out). Statistics, in the clean outputs' per-dimension std units:
``max_cos`` / ``share_cos_gt_0.5``: centred cosine of clean outputs with the PV's offset from the
clean mean; ``median_abs_z``: how far outside the clean range the PV lies; ``sign_match_max``.
"""

from __future__ import annotations

import json
import random
import sys

import torch
import torch.nn.functional as F

from lmsanitator.data import insert_trigger, load_corpus, sample, split_corpus
from lmsanitator.experiments.recipes import mine
from lmsanitator.metrics import sign_match
from lmsanitator.models import load_encoder

SCAN = {"loops": 30, "sentences": 320, "batch_size": 32, "seed": 0, "corpus_seed": 0}


def diagnose(model: str, target: str) -> dict:
    corpus = load_corpus("austen")
    enc = load_encoder(model)
    miner = mine(enc, corpus, target, SCAN)
    rec = {"model": model, "target": target, "verdict": miner.report_["verdict"]}
    if not miner.pvs_:
        return rec
    held = sample(split_corpus(corpus, "heldout"), 400, 3)
    if target == "mask":  # one [MASK] at a random word, as the scan places it
        rng = random.Random(0)
        held = [insert_trigger(t, enc.tokenizer.mask_token, rng, times=1) for t in held]
    f, _ = enc.features(held, target)
    pv = miner.pvs_[0].float()
    mu, sd = f.mean(0), f.std(0).clamp_min(1e-6)
    z = (pv - mu) / sd
    cos = F.cosine_similarity((f - mu) / sd, z[None], dim=1)
    return rec | {
        "max_cos": round(float(cos.max()), 3),
        "share_cos_gt_0.5": round(float((cos > 0.5).float().mean()), 3),
        "median_abs_z": round(float(z.abs().median()), 2),
        "sign_match_max": round(float(sign_match(f, pv[None]).max()), 3),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    torch.manual_seed(0)
    for model, target in zip(args[::2], args[1::2], strict=True):
        print(json.dumps(diagnose(model, target)), flush=True)
