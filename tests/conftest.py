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
