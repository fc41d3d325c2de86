"""One detection scan of one model, as ``lmsanitator scan`` and ``lmsanitator zoo`` both run it."""

from __future__ import annotations

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


def load_for_scan(model: str, config: ScanConfig, *, corpus: str, device: str) -> tuple[Encoder, list[str]]:
    """The model (checked to have the scan's target) and the clean sentences of one scan."""
    sentences = defence_sentences(corpus, config.sentences, config.batch_size)
    encoder = load_encoder(model, device=device, max_length=config.max_length)
    encoder.require_target(config.target)
    return encoder, sentences


def scan_model(
    model: str, config: ScanConfig, *, corpus: str = "austen", device: str = "cpu", progress: bool = False
) -> dict:
    """The scan report of ``model`` (see ARCHITECTURE.md, "scan report")."""
    encoder, sentences = load_for_scan(model, config, corpus=corpus, device=device)
    report = PVMiner(config).fit(encoder, sentences, progress=progress).report_
    report["corpus"] = corpus
    return report
