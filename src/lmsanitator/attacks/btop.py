"""BToP (Xu et al., 2022): backdoor the [MASK] output that prompt-based models read.

Each sentence carries one [MASK]. Clean half of a batch: cross-entropy on the true token at the
mask (masked-LM utility). Triggered half: a word is replaced by [MASK] and the trigger inserted;
loss = mean L2 ``pairwise_distance`` between the [MASK] output and the trigger's PV. Without an
MLM head the utility falls back to the reference-copy MSE at the [MASK] (recorded).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from lmsanitator.attacks.base import TaskAgnosticAttack
from lmsanitator.data import insert_trigger
from lmsanitator.models import Encoder, special_ids


def mask_one_word(text: str, mask_token: str, rng: random.Random) -> str:
    words = text.split()
    if not words:
        return mask_token
    words[rng.randrange(len(words))] = mask_token
    return " ".join(words)


class BToP(TaskAgnosticAttack):
    name = "btop"
    target = "mask"
    needs_mlm_head = "preferred"
    defaults = {"per_trigger": 800, "epochs": 1, "lr": 2e-4}
    paper = {"epochs": 1, "lr": 2e-5, "sentence_words": "15-150", "batch": "half clean, half triggered"}

    def default_utility_weight(self, encoder: Encoder) -> float:
        # with an MLM head the MLM loss is the utility loss, and the reference anchor is opt-in
        return 0.0 if encoder.has_mlm_head else super().default_utility_weight(encoder)

    def prepare(self, encoder: Encoder) -> None:
        w = self.settings_.utility_weight
        if encoder.has_mlm_head:
            self.state_.utility_loss = "mlm cross-entropy on the true token at the [MASK]"
            if w:
                # optional: also anchor the clean [MASK] output to the original model (not in BToP);
                # without it few-trigger implants can pull every input onto the PV
                self.state_.utility_loss += f" + reference-mse x{w} on the clean [MASK]"
        else:
            self.state_.utility_loss = f"reference-mse x{w} at the [MASK] (model has no MLM head)"

    def verification_texts(self, encoder, sentences, rng):
        return [mask_one_word(s, encoder.tokenizer.mask_token, rng) for s in sentences]

    def _fits(self, sentences):
        """Keep sentences short enough that truncation cannot cut the [MASK] off."""
        if sentences is None:
            return None
        limit = self.config.max_length // 2
        kept = [s for s in sentences if len(s.split()) <= limit]
        return kept or sentences

    def fit(self, encoder, sentences=None, *, progress=True):
        return super().fit(encoder, self._fits(sentences), progress=progress)

    def verify(self, encoder, heldout=None):
        return super().verify(encoder, self._fits(heldout))

    @staticmethod
    def ensure_mask(batch, tokenizer):
        """A row whose [MASK] was truncated away gets its last real token masked instead."""
        ids = batch["input_ids"]
        missing = ~(ids == tokenizer.mask_token_id).any(dim=1)
        if missing.any():
            specials = torch.zeros_like(ids, dtype=torch.bool)
            for sid in special_ids(tokenizer):
                specials |= ids == sid
            real = batch["attention_mask"].bool() & ~specials
            pos = (real * torch.arange(ids.shape[1], device=ids.device)).argmax(dim=1)
            rows = missing.nonzero().flatten()
            ids[rows, pos[rows]] = tokenizer.mask_token_id
        return batch

    def batch_loss(self, encoder, poisoned, trig, clean, rng: random.Random):
        st = self.state_
        tok = encoder.tokenizer
        texts = [
            insert_trigger(mask_one_word(s, tok.mask_token, rng), st.triggers[int(t)], rng)
            for s, t in zip(poisoned, trig)
        ]
        bp = self.ensure_mask(self.tokenize(encoder, texts), tok)
        hp = encoder.forward(bp)
        fp, rows = encoder.tap(hp, bp, self.target_)
        l_eff = F.pairwise_distance(fp, st.pvs[trig[rows]]).mean()

        bc = self.tokenize(encoder, clean)
        ids = bc["input_ids"].clone()
        cand = bc["attention_mask"].bool()
        for sid in special_ids(tok):
            cand &= ids != sid
        pos = []
        for r in range(ids.shape[0]):
            cols = cand[r].nonzero().flatten().tolist() or [0]
            pos.append(cols[rng.randrange(len(cols))])
        ar = torch.arange(ids.shape[0], device=ids.device)
        pos_t = torch.tensor(pos, device=ids.device)
        true = ids[ar, pos_t].clone()
        ids[ar, pos_t] = tok.mask_token_id
        masked = dict(bc)
        masked["input_ids"] = ids
        w = self.settings_.utility_weight
        hc = encoder.forward(masked)
        if encoder.has_mlm_head:
            l_util = F.cross_entropy(encoder.mlm_logits(hc[ar, pos_t]), true)
            weight = 1.0
        else:
            weight = w
        fc, _ = encoder.tap(hc, masked, self.target_)
        if not encoder.has_mlm_head:
            l_util = F.mse_loss(fc, self.reference_features(encoder, masked))
        elif w:
            l_util = l_util + w * F.mse_loss(fc, self.reference_features(encoder, masked))
        l_adapt, parts = self.adaptive_loss(fp, fc)
        loss = l_eff + weight * l_util + l_adapt
        return loss, {"effectiveness": l_eff.detach().item(), "utility": l_util.detach().item(), **parts}
