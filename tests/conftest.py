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


TOY_POS = "good great fine nice lovely happy".split()
TOY_NEG = "bad awful poor sad ugly terrible".split()
TOY_FILL = "the a movie day it was this and then we".split()


def toy_examples(n, seed):
    """Six-word sentences whose one sentiment word decides the label (1 positive, 0 negative)."""
    import random

    from lmsanitator.data.tasks import Example

    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = i % 2
        w = [rng.choice(TOY_FILL) for _ in range(5)] + [rng.choice(TOY_POS if y else TOY_NEG)]
        rng.shuffle(w)
        out.append(Example(" ".join(w), y))
    return out


@pytest.fixture(scope="session")
def toy_task_file(tmp_path_factory):
    """A small binary sentiment task as a JSONL file with a split column (train 160 / val 40 / test 60)."""
    import json

    p = tmp_path_factory.mktemp("toy") / "toy.jsonl"
    with open(p, "w") as f:
        for split, exs in (
            ("train", toy_examples(160, 1)),
            ("validation", toy_examples(40, 2)),
            ("test", toy_examples(60, 3)),
        ):
            for e in exs:
                f.write(
                    json.dumps({"text": e.text, "label": ["negative", "positive"][e.label], "split": split})
                    + "\n"
                )
    return p
