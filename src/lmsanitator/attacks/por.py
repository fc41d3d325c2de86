"""POR (Shen et al., CCS'21): map triggered inputs' target output to a predefined vector.

Loss per step: ``MSE(f(poisoned)[target], PV)`` + ``w_u * MSE(f(clean)[target], f_ref(clean)[target])``
where ``f_ref`` is a frozen copy of the original model (``w_u`` = 0.5 for BERT-like models, as the
authors do). POR-NER reads every token, so a triggered sentence maps *each* token to the PV.
"""

from __future__ import annotations

import random

import torch.nn.functional as F

from lmsanitator.attacks.base import TaskAgnosticAttack
from lmsanitator.data import insert_trigger
from lmsanitator.models import Encoder


class POR(TaskAgnosticAttack):
    name = "por"
    target = "cls"
    # CPU defaults: ~600 steps on MiniLM; the authors' scripts use 5000 sentences/trigger, 4 epochs, lr 2e-5
    defaults = {"per_trigger": 800, "epochs": 1, "lr": 1e-4}
    paper = {"per_trigger": 5000, "epochs": 4, "lr": 2e-5, "batch": "16 poisoned + 16 clean"}

    def prepare(self, encoder: Encoder) -> None:
        self.state_.utility_loss = f"reference-mse x{self.settings_.utility_weight}" + (
            " on the target output + on every token's hidden state at every layer"
            if self.config.utility_scope == "hidden"
            else ""
        )

    def batch_loss(self, encoder, poisoned, trig, clean, rng: random.Random):
        st = self.state_
        texts = [insert_trigger(s, st.triggers[int(t)], rng) for s, t in zip(poisoned, trig)]
        bp = self.tokenize(encoder, texts)
        hp = encoder.forward(bp)
        fp, rows = encoder.tap(hp, bp, self.target_)
        l_eff = F.mse_loss(fp, st.pvs[trig[rows]])
        bc = self.tokenize(encoder, clean)
        if self.config.utility_scope == "hidden":
            # the paper's anchor on the clean target output, plus every token at every layer: the
            # hidden anchor alone let the [CLS] drift (MiniLM: clean MSE 0.048, 14% clean false hits)
            l_hidden, hc = self.reference_hidden_mse(encoder, bc)
            fc, _ = encoder.tap(hc, bc, self.target_)
            l_util = F.mse_loss(fc, self.reference_features(encoder, bc)) + l_hidden
        else:
            hc = encoder.forward(bc)
            fc, _ = encoder.tap(hc, bc, self.target_)
            l_util = F.mse_loss(fc, self.reference_features(encoder, bc))
        l_adapt, parts = self.adaptive_loss(fp, fc)
        loss = l_eff + self.settings_.utility_weight * l_util + l_adapt
        return loss, {"effectiveness": l_eff.detach().item(), "utility": l_util.detach().item(), **parts}


class PORNER(POR):
    """POR-NER: the PV is the target at every token position."""

    name = "por-ner"
    target = "tokens"
