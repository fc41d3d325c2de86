"""NeuBA (Zhang et al., 2021): MLM pre-training loss + MSE of the [CLS] output to the PV.

The trigger's token ids are spliced in at one random position of a clean sentence; clean
sentences keep the masked-language-model objective (15% of tokens, 80/10/10) with the MLM head
frozen. A model without an MLM head falls back to POR's reference-copy utility loss (recorded).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from lmsanitator.attacks.base import TaskAgnosticAttack
from lmsanitator.models import Encoder, special_ids


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    generator: torch.Generator,
    prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``prob`` of real non-special tokens; 80% -> [MASK], 10% random, 10% kept."""
    ids = input_ids.clone()
    labels = input_ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in special_ids(tokenizer):
        special |= ids == sid
    cand = attention_mask.bool() & ~special
    pick = (torch.rand(ids.shape, generator=generator) < prob).to(ids.device) & cand
    # at least one prediction per row keeps the loss defined on short sentences
    none = ~pick.any(dim=1)
    if none.any():
        r = torch.rand(ids.shape, generator=generator).to(ids.device)
        r = torch.where(cand, r, torch.full_like(r, -1.0))
        pick[none, r[none].argmax(dim=1)] = True
    labels[~pick] = -100
    u = torch.rand(ids.shape, generator=generator).to(ids.device)
    ids[pick & (u < 0.8)] = tokenizer.mask_token_id
    rand = pick & (u >= 0.8) & (u < 0.9)
    ids[rand] = torch.randint(len(tokenizer), ids.shape, generator=generator).to(ids.device)[rand]
    return ids, labels


class NeuBA(TaskAgnosticAttack):
    name = "neuba"
    target = "cls"
    needs_mlm_head = "preferred"
    defaults = {"per_trigger": 800, "epochs": 1, "lr": 2e-4}
    paper = {"epochs": 4, "lr": 5e-5, "block_size": 128, "mlm_probability": 0.15}

    def default_utility_weight(self, encoder: Encoder) -> float:
        # with an MLM head the MLM loss is the utility loss, and the reference anchor is opt-in
        return 0.0 if encoder.has_mlm_head else super().default_utility_weight(encoder)

    def prepare(self, encoder: Encoder) -> None:
        self.generator_ = torch.Generator().manual_seed(self.config.seed)  # the MLM masking draws
        w = self.settings_.utility_weight
        if encoder.has_mlm_head:
            self.state_.utility_loss = "mlm (15%, 80/10/10, head frozen)"
            if w:
                # optional: also anchor the clean [CLS] to the original model (not in NeuBA)
                self.state_.utility_loss += f" + reference-mse x{w} on clean [CLS]"
        else:
            self.state_.utility_loss = f"reference-mse x{w} (model has no MLM head)"

    def splice(self, encoder: Encoder, texts: list[str], trig: torch.Tensor, rng: random.Random):
        """Insert each trigger's ids at one random position between the special tokens."""
        tok = encoder.tokenizer
        enc = tok(texts, truncation=True, max_length=self.config.max_length - 4)
        rows = []
        for ids, t in zip(enc["input_ids"], trig.tolist()):
            t_ids = tok(self.state_.triggers[t], add_special_tokens=False)["input_ids"]
            pos = rng.randint(1, max(1, len(ids) - 1))
            rows.append(ids[:pos] + t_ids + ids[pos:])
        batch = tok.pad({"input_ids": rows}, return_tensors="pt")
        return batch.to(encoder.device)

    def batch_loss(self, encoder, poisoned, trig, clean, rng: random.Random):
        st = self.state_
        bp = self.splice(encoder, poisoned, trig, rng)
        hp = encoder.forward(bp)
        fp, rows = encoder.tap(hp, bp, self.target_)
        l_eff = F.mse_loss(fp, st.pvs[trig[rows]])
        bc = self.tokenize(encoder, clean)
        w = self.settings_.utility_weight
        if encoder.has_mlm_head:
            ids, labels = mask_tokens(
                bc["input_ids"], bc["attention_mask"], encoder.tokenizer, self.generator_
            )
            masked = dict(bc)
            masked["input_ids"] = ids
            hc = encoder.forward(masked)
            picked = labels != -100  # logits only where a token is predicted: 7x less head work
            logits = encoder.mlm_logits(hc[picked])
            l_util = F.cross_entropy(logits, labels[picked])
            fc, _ = encoder.tap(hc, masked, self.target_)
            weight = 1.0
            if w:
                l_util = l_util + w * F.mse_loss(fc, self.reference_features(encoder, masked))
        else:
            hc = encoder.forward(bc)
            fc, _ = encoder.tap(hc, bc, self.target_)
            l_util = F.mse_loss(fc, self.reference_features(encoder, bc))
            weight = w
        l_adapt, parts = self.adaptive_loss(fp, fc)
        loss = l_eff + weight * l_util + l_adapt
        return loss, {"effectiveness": l_eff.detach().item(), "utility": l_util.detach().item(), **parts}
