"""One detection scan of one model, as ``lmsanitator scan`` and ``lmsanitator zoo`` both run it."""

from __future__ import annotations

import dataclasses

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import load_corpus, sample, split_corpus
from lmsanitator.models import Encoder, load_encoder
from lmsanitator.scan.config import ScanConfig
from lmsanitator.scan.miner import PVMiner


def defence_sentences(corpus: str, n: int, batch_size: int) -> list[str]:
    """``n`` clean sentences from the corpus' defence split (disjoint from what attacks train on)."""
    pool = split_corpus(load_corpus(corpus), "defence")
    if len(pool) < batch_size:
        raise LMSanitatorError(f"corpus '{corpus}' has {len(pool)} defence sentences, fewer than one batch")
    return sample(pool, n, 0)


def for_model(config: ScanConfig, encoder: Encoder) -> ScanConfig:
    """``config`` with the target a decoder can have: a decoder has no [CLS], so the default ``cls``
    read-out becomes its sequence read-out, the last token (what its classification heads read)."""
    if encoder.arch.kind == "decoder" and config.target == "cls":
        return dataclasses.replace(config, target=encoder.sequence_target)
    return config


def load_for_scan(
    model: str, config: ScanConfig, *, corpus: str, device: str
) -> tuple[Encoder, list[str], ScanConfig]:
    """The model, the clean sentences of one scan and the config for this model (its target checked)."""
    sentences = defence_sentences(corpus, config.sentences, config.batch_size)
    encoder = load_encoder(model, device=device, max_length=config.max_length)
    config = for_model(config, encoder)
    encoder.require_target(config.target)
    return encoder, sentences, config


def scan_model(
    model: str, config: ScanConfig, *, corpus: str = "austen", device: str = "cpu", progress: bool = False
) -> dict:
    """The scan report of ``model`` (see ARCHITECTURE.md, "scan report")."""
    encoder, sentences, config = load_for_scan(model, config, corpus=corpus, device=device)
    report = PVMiner(config).fit(encoder, sentences, progress=progress).report_
    report["corpus"] = corpus
    return report
