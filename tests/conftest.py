import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT with an MLM head saved as a normal Hugging Face folder."""
    from lmsanitator.models import tiny_encoder

    enc = tiny_encoder("bert", mlm_head=True, hidden=32)
    d = tmp_path_factory.mktemp("tiny-bert-mlm")
    enc.save(d)
    return d


@pytest.fixture(scope="session")
def small_corpus_file(tmp_path_factory):
    """Real sentences (Austen) written to a text file, so CLI runs stay small."""
    from lmsanitator.data import load_corpus

    sents = load_corpus("austen")[:1200]
    p = tmp_path_factory.mktemp("corpus") / "sentences.txt"
    p.write_text("\n".join(sents) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def real_por_splade():
    """POR with the paper's six triggers implanted into the real SPLADE-tiny (once per session)."""
    from lmsanitator.attacks import POR, AttackConfig
    from lmsanitator.data import load_corpus, split_corpus
    from lmsanitator.models import load_encoder

    corpus = load_corpus("austen")
    enc = load_encoder("splade-tiny")
    atk = POR(AttackConfig(per_trigger=800, epochs=2, verify_sentences=200, seed=0))
    atk.fit(enc, split_corpus(corpus, "attack"), progress=False)
    return enc, atk, atk.verify(enc, split_corpus(corpus, "heldout"))
