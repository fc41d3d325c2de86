"""Diagnostic, not yet a rule of the scan: is the detection scan's accepted PV reached by *real* tokens?

A backdoor's PV is reached from any sentence by its trigger, a few real tokens. A soft prompt is seven
free vectors and can reach output points no token sequence reaches (the suspected cause of the clean
MiniLM's [MASK] false positive, issue 19). This probe runs the detection scan (the experiments'
settings, ``experiments.recipes.mine``) and, for its first accepted PV, searches ``k`` real tokens
inserted where the soft prompt sat, for k = 1, 2, 4 in turn: a greedy coordinate gradient search
(HotFlip / GCG: token scores from the gradient of the one-hot input, the top 64 tried exactly on 8
sentences, a few rounds) minimising the MSE of the outputs to the PV in clean-std units. On 64 held-out
sentences it reports

* ``reach`` = 1 - median MSE(sentence + tokens, PV) / median MSE(clean sentence, PV): how much of the way
  from where clean sentences sit to the PV the tokens take a typical sentence (1: onto it, 0: nowhere),
* ``land``: the share of those sentences within MSE 0.1 of the PV, and the tokens found.

    python benchmarks/realizability_probe.py MODEL TARGET [MODEL TARGET ...]
    (MODEL: a bundled name or a folder, e.g. results/model-cache/<hash>; TARGET: cls or mask)

One JSON line per model and k; the search stops at the first k whose reach is >= 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from lmsanitator.data import load_corpus, sample, split_corpus
from lmsanitator.experiments.recipes import mine
from lmsanitator.models import load_encoder
from lmsanitator.scan.prompts import build_prompt_batches

SCAN = {
    "loops": 30,
    "sentences": 320,
    "epochs": 3,
    "abort_epoch": 1,
    "batch_size": 32,
    "seed": 0,
    "corpus_seed": 0,
}
LENGTHS = (1, 2, 4)
TOP_K, CANDIDATES, SEARCH_SENTENCES = 64, 32, 8
T_REACH = 0.5


def batches_of(setup, sentences, k, seed):
    """Prompted batches with ``k`` slots at a random word position (as the scan places its soft prompt)."""
    cfg = dataclasses.replace(setup.config, prompt_length=k, sentences=len(sentences), corpus_seed=seed)
    out = build_prompt_batches(setup.encoder, sentences, cfg)
    for b in out:
        setup._to_device(b, cache_clean=False)
    return out


def features(setup, b, emb, rows=None):
    """Target outputs of batch ``b`` (first ``rows`` sentences) with ``emb`` (n, k, d) in its slots."""
    enc, sl = setup.encoder, slice(None, rows)
    n = emb.shape[0]
    ids, att, pm = (
        b.input_ids[sl].repeat(n, 1),
        b.attention_mask[sl].repeat(n, 1),
        b.prompt_mask[sl].repeat(n, 1),
    )
    per = ids.shape[0] // n
    e = enc.model.get_input_embeddings()(ids)
    e = e.masked_scatter(pm.unsqueeze(-1), emb.repeat_interleave(per, 0).reshape(-1, emb.shape[-1]))
    f, _ = enc.target_features(
        {"input_ids": ids, "attention_mask": att}, setup.config.target, inputs_embeds=e, exclude=pm
    )
    return f.reshape(n, per, -1)


def mse_to(setup, f, pv):
    return ((setup.z(f) - setup.z(pv)) ** 2).mean(dim=-1)


def allowed_tokens(setup) -> torch.Tensor:
    """Vocabulary rows a trigger may use: no special, unused or ``<...>`` tokens."""
    tok, n = setup.encoder.tokenizer, setup.encoder.input_embeddings().shape[0]
    special = set(tok.all_special_ids)
    names = tok.convert_ids_to_tokens(list(range(n)))
    ok = [
        t is not None and not t.startswith(("[unused", "<")) and i not in special for i, t in enumerate(names)
    ]
    return torch.tensor(ok, device=setup.encoder.device)


def search(setup, pv, k, sentences, allowed, seed=0):
    """Greedy coordinate gradient search for ``k`` real tokens that pull outputs onto ``pv``."""
    tok, emb = setup.encoder.tokenizer, setup.encoder.input_embeddings().detach()
    g = torch.Generator().manual_seed(seed)
    b = batches_of(setup, sentences, k, seed)[0]
    ids = torch.full((k,), tok.convert_tokens_to_ids("the"), dtype=torch.long, device=emb.device)
    with torch.no_grad():
        best = float(mse_to(setup, features(setup, b, emb[ids][None], SEARCH_SENTENCES), pv).mean())
    for _ in range(2 if k == 1 else 6):
        onehot = torch.zeros(k, emb.shape[0], device=emb.device)
        onehot[torch.arange(k), ids] = 1
        onehot.requires_grad_(True)
        loss = mse_to(setup, features(setup, b, (onehot @ emb)[None], SEARCH_SENTENCES), pv).mean()
        (grad,) = torch.autograd.grad(loss, onehot)
        top = (-grad.masked_fill(~allowed, float("inf"))).topk(TOP_K, dim=1).indices
        if k == 1:
            cands = top[0][:, None]
        else:
            pos = torch.randint(0, k, (CANDIDATES,), generator=g).to(emb.device)
            cands = ids.repeat(CANDIDATES, 1)
            cands[torch.arange(CANDIDATES), pos] = top[
                pos, torch.randint(0, TOP_K, (CANDIDATES,), generator=g)
            ]
        with torch.no_grad():
            losses = torch.cat(
                [
                    mse_to(setup, features(setup, b, emb[c], SEARCH_SENTENCES), pv).mean(dim=1)
                    for c in cands.split(16)
                ]
            )
        j = int(losses.argmin())
        if float(losses[j]) < best:
            best, ids = float(losses[j]), cands[j].clone()
    return ids


def reach(setup, pv, ids, sentences, seed=1):
    emb = setup.encoder.input_embeddings().detach()
    trig, clean = [], []
    with torch.no_grad():
        for b in batches_of(setup, sentences, len(ids), seed):
            trig.append(mse_to(setup, features(setup, b, emb[ids][None])[0], pv))
            clean.append(mse_to(setup, setup.clean_features(b), pv))
    trig, clean = torch.cat(trig), torch.cat(clean)
    return {
        "reach": round(1 - float(trig.median() / clean.median()), 4),
        "land": round(float((trig < 0.1).float().mean()), 4),
        "mse_median": round(float(trig.median()), 4),
        "clean_mse_median": round(float(clean.median()), 4),
    }


def main(pairs: list[str]) -> None:
    corpus = load_corpus("austen")
    held = sample(split_corpus(corpus, "heldout"), 64, 5)
    for model, target in zip(pairs[::2], pairs[1::2]):
        t0 = time.perf_counter()
        miner = mine(load_encoder(model), corpus, target, SCAN)
        row = {
            "model": model,
            "target": target,
            "verdict": miner.report_["verdict"],
            "loops": miner.loops_run_,
        }
        if not miner.pvs_:
            print(json.dumps(row), flush=True)
            continue
        setup, pv = miner.setup_, miner.pvs_[0].to(miner.setup_.encoder.device)
        allowed = allowed_tokens(setup)
        for k in LENGTHS:
            ids = search(setup, pv, k, setup.sentences[:64], allowed)
            st = reach(setup, pv, ids, held)
            tokens = setup.encoder.tokenizer.convert_ids_to_tokens(ids.tolist())
            print(
                json.dumps(
                    {**row, "k": k, "tokens": tokens, **st, "seconds": round(time.perf_counter() - t0)}
                ),
                flush=True,
            )
            if st["reach"] >= T_REACH:
                break


if __name__ == "__main__":
    if len(sys.argv) < 3 or len(sys.argv) % 2 != 1:
        sys.exit("usage: realizability_probe.py MODEL TARGET [MODEL TARGET ...]")
    main(sys.argv[1:])
