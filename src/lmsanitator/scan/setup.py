"""What every fuzz loop of one scan shares, computed once by :meth:`FuzzSetup.prepare`.

* the prompted batches on the model's device, with the clean target outputs cached (the distance
  loss compares against them every step; they never change, the model is frozen),
* the clean outputs' per-dimension mean and std (``standardize``: losses in clean-std units, so the
  thresholds mean the same on models whose outputs differ in scale),
* the embedding matrix's range widened by ``range_factor`` (a legit soft prompt stays inside it),
* the thresholds resolved for the model family.

It is read-only during the fuzz loops, so forked workers can share it copy-on-write.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lmsanitator.models import Encoder
from lmsanitator.scan.config import ScanConfig
from lmsanitator.scan.prompts import PromptBatch, build_prompt_batches


@dataclass
class FuzzSetup:
    config: ScanConfig
    encoder: Encoder
    thresholds: dict  # ScanConfig.resolved(encoder.bert_like)
    batches: list[PromptBatch]
    clean_mean: torch.Tensor  # per-dimension mean of the clean outputs (zeros without standardize)
    clean_std: torch.Tensor  # per-dimension std of the clean outputs (ones without standardize)
    prompt_lo: torch.Tensor  # per-dimension range a legit soft prompt stays inside
    prompt_hi: torch.Tensor
    recompute_clean: bool = False  # benchmark switch: the naive way, clean outputs every step
    clean_rows: torch.Tensor | None = None  # every clean output (rows, model units): the clean evidence
    sentences: list[str] | None = None  # the sentence of each clean row (row order; observed PVs)

    @classmethod
    def prepare(
        cls, encoder: Encoder, sentences: list[str], cfg: ScanConfig, *, recompute_clean: bool = False
    ) -> FuzzSetup:
        encoder.require_target(cfg.target)
        model = encoder.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # only the soft prompt learns; no weight gradients are computed
        batches = build_prompt_batches(encoder, sentences, cfg)
        d, dev = encoder.hidden_size, encoder.device
        setup = cls(
            config=cfg,
            encoder=encoder,
            thresholds=cfg.resolved(encoder.bert_like),
            batches=batches,
            clean_mean=torch.zeros(d, device=dev),
            clean_std=torch.ones(d, device=dev),
            prompt_lo=torch.empty(0),
            prompt_hi=torch.empty(0),
            recompute_clean=recompute_clean,
        )
        for b in batches:
            setup._to_device(b, cache_clean=not recompute_clean)
        setup.sentences = [sentences[i] for b in batches for i in b.source]
        rows = torch.cat([setup.clean_of(b) for b in batches])
        # one row per sentence, as the diversity loss sees them (target tokens: a sentence's mean token)
        setup.clean_rows = torch.cat([setup.diversity_rows(setup.clean_of(b), b) for b in batches])
        if cfg.standardize:
            setup.clean_mean = rows.mean(dim=0)
            setup.clean_std = rows.std(dim=0).clamp_min(1e-6)
        emb = encoder.input_embeddings().detach()
        lo, hi = emb.min(dim=0).values, emb.max(dim=0).values
        f = cfg.range_factor - 1
        setup.prompt_lo, setup.prompt_hi = lo - f * lo.abs(), hi + f * hi.abs()
        return setup

    def _to_device(self, b: PromptBatch, cache_clean: bool) -> None:
        """Move a batch to the model's device, cache its clean outputs and (target tokens) the example
        of each token row."""
        for k in ("input_ids", "attention_mask", "prompt_mask", "clean_ids", "clean_mask"):
            setattr(b, k, getattr(b, k).to(self.encoder.device))
        if cache_clean:
            b.clean = self.clean_features(b)
        if self.config.target == "tokens":
            _, b.rows = self.encoder.tap(
                b.input_ids.new_zeros(*b.input_ids.shape, 1).float(),
                b.as_batch(),
                "tokens",
                exclude=b.prompt_mask,
            )

    # ---- outputs --------------------------------------------------------------------------------------
    def rows_of(self, sentences: list[str]) -> torch.Tensor:
        """Clean outputs of other sentences, one row per sentence as the diversity loss sees them (in
        full batches: a remainder under one batch is dropped)."""
        cfg = dataclasses.replace(self.config, sentences=max(len(sentences), self.config.batch_size))
        out = []
        for b in build_prompt_batches(self.encoder, sentences, cfg):
            self._to_device(b, cache_clean=True)
            out.append(self.diversity_rows(b.clean, b))
        return torch.cat(out)

    def z(self, f: torch.Tensor) -> torch.Tensor:
        """Outputs in clean-std units (unchanged without ``standardize``)."""
        return (f - self.clean_mean) / self.clean_std

    def clean_features(self, b: PromptBatch) -> torch.Tensor:
        """Target outputs of the sentences without the prompt (no gradient)."""
        with torch.no_grad():
            f, _ = self.encoder.target_features(b.as_batch(clean=True), self.config.target)
        return f

    def clean_of(self, b: PromptBatch) -> torch.Tensor:
        """The cached clean outputs of ``b`` (recomputed with ``recompute_clean``)."""
        return b.clean if b.clean is not None else self.clean_features(b)

    def step_features(self, b: PromptBatch, prompt: torch.Tensor) -> torch.Tensor:
        """Target outputs of ``b`` with the soft prompt's vectors in its prompt slots."""
        enc = self.encoder
        batch = b.as_batch()
        emb = enc.model.get_input_embeddings()(b.input_ids)
        emb = emb.masked_scatter(b.prompt_mask.unsqueeze(-1), prompt.repeat(b.input_ids.shape[0], 1))
        f, _ = enc.target_features(batch, self.config.target, inputs_embeds=emb, exclude=b.prompt_mask)
        return f

    def diversity_rows(self, f: torch.Tensor, b: PromptBatch) -> torch.Tensor:
        """The rows the diversity loss spreads over: one per sentence."""
        if self.config.target != "tokens":
            return f
        # one row per sentence (mean of its tokens) so the entropy floor stays ln(batch)
        n = b.input_ids.shape[0]
        s = f.new_zeros(n, f.shape[1]).index_add(0, b.rows, f)
        c = torch.bincount(b.rows, minlength=n).clamp_min(1).unsqueeze(1).to(f.dtype)
        return s / c

    # ---- the soft prompt ---------------------------------------------------------------------------------
    def init_soft_prompt(self, seed: int) -> torch.Tensor:
        """Soft prompt for fuzz seed ``s``: vocabulary rows ``(s*70 + i*10) % vocab``."""
        emb = self.encoder.input_embeddings().detach()
        rows = [(seed * 70 + i * 10) % emb.shape[0] for i in range(self.config.prompt_length)]
        return emb[rows].clone()

    def min_mse_to(self, pv: torch.Tensor, known: list[torch.Tensor]) -> float | None:
        """MSE (in the scan's units) from ``pv`` to the nearest known PV: the uniqueness test's
        statistic (None when no PV is known)."""
        dev = self.clean_mean.device
        zpv = self.z(pv.to(dev))
        return min((float(((zpv - self.z(q.to(dev))) ** 2).mean()) for q in known), default=None)

    def pv_of(self, prompt: torch.Tensor) -> torch.Tensor:
        """The PV a soft prompt inverts: the mean target output over all batches with the final
        prompt (one no-grad pass), in the model's own units. (The authors average outputs seen
        while the prompt still moves; the final prompt's outputs are what the monitor will meet.)"""
        with torch.no_grad():
            total, n = None, 0
            for b in self.batches:
                f = self.step_features(b, prompt)
                total = f.sum(dim=0) if total is None else total + f.sum(dim=0)
                n += f.shape[0]
        return (total / n).cpu()

    def prompt_excess(self, prompt: torch.Tensor) -> torch.Tensor:
        """How far the soft prompt leaves the widened embedding range (<= 0: inside)."""
        return torch.maximum(prompt - self.prompt_hi, self.prompt_lo - prompt).max()
