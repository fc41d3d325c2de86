"""Decoder LLMs (LLaMA, Gemma 3) as first-class models: the architecture rows, the ``last`` tap,
padding, every tuning method, weight poisoning and a POR implant at the last token, on tiny random
decoders with the real SmolLM2 tokenizer; the real SmolLM2 / Gemma 3 checks are marked ``real``."""

import functools
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmsanitator.attacks import POR, AttackConfig, BadNet, PoisonConfig
from lmsanitator.core.architectures import DECODER_TYPES, architecture
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks import Example, Task
from lmsanitator.models import (
    BUNDLED,
    BUNDLED_CAUSAL,
    TAPS,
    TARGETS,
    cache_dir,
    load_causal_lm,
    load_encoder,
    target_positions,
)
from lmsanitator.models import tiny_decoder as _tiny_decoder
from lmsanitator.tuning import TaskInfo, TuneConfig, TunedModel, Tuner

METHODS = ("lora", "prompt-tuning", "p-tuning", "p-tuning-v2", "full")
TEXTS = ["the film was good", "bad", "a rather long sentence about nothing much at all, really", "good fun"]


@functools.cache
def tiny_decoder(arch="llama", seed=0):
    return _tiny_decoder(arch, seed=seed)


def toy_task(n=96):
    """The keyword decides the label; the keyword sits anywhere, so the last token must read it."""
    rng = random.Random(0)
    words = "the a film plot actor scene story music day night".split()
    ex = []
    for i in range(n):
        y = i % 2
        body = rng.sample(words, 4)
        body.insert(rng.randint(0, 4), "good" if y else "bad")
        ex.append(Example(text=" ".join(body), label=y))
    k = n // 4
    return Task(
        name="toy",
        labels=("neg", "pos"),
        train=ex[2 * k :],
        validation=ex[k : 2 * k],
        test=ex[:k],
        max_length=32,
    )


# ---------------------------------------------------------------------------- table and loading
def test_decoder_rows_of_the_architecture_table():
    assert {"llama", "gemma3_text"} <= DECODER_TYPES
    for t in ("llama", "gemma3_text"):
        a = architecture(t)
        assert a.kind == "decoder" and not a.token_types and a.lora_targets == ("q_proj", "v_proj")
        assert a.attention_prefix and "p-tuning-v2" not in a.unsupported
        assert a.sequence_target == "last"
    assert architecture("bert").sequence_target == "cls"
    assert set(BUNDLED_CAUSAL) == {"smollm2", "gemma3-270m"}
    assert all(BUNDLED[n].kind == "decoder" for n in BUNDLED_CAUSAL)
    assert TAPS == TARGETS and TARGETS[-1] == "last"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSANITATOR_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LMSANITATOR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "lmsanitator"


def test_tiny_decoder_tokenizer_pads_right_with_eos():
    enc = tiny_decoder()
    tok = enc.tokenizer
    assert enc.is_decoder and enc.sequence_target == "last" and not enc.has_mlm_head
    assert tok.padding_side == "right" and tok.pad_token_id == tok.eos_token_id is not None
    assert type(enc.backbone).__name__ == "LlamaModel"


# ---------------------------------------------------------------------------- the last tap
def test_last_tap_reads_the_last_real_token_on_either_padding_side():
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])
    am = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert target_positions(ids, am, "last", None).tolist() == [2, 4, 4]


def test_last_features_do_not_depend_on_padding():
    """Right padding: under the causal mask no real token sees a pad, so a batch computes what each
    input computes alone."""
    enc = tiny_decoder()
    together, rows = enc.features(TEXTS, target="last")
    alone = torch.cat([enc.features([t], target="last")[0] for t in TEXTS])
    assert rows.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    b = enc.tokenize(TEXTS)
    h = enc.forward(b)
    n = b["attention_mask"].sum(1) - 1
    torch.testing.assert_close(enc.tap(h, b, "last")[0], h[torch.arange(4), n])


def test_decoder_targets_that_cannot_work_are_refused():
    enc = tiny_decoder()
    with pytest.raises(LMSanitatorError, match="use 'last'"):
        enc.require_target("cls")
    with pytest.raises(LMSanitatorError, match="mask token"):
        enc.require_target("mask")
    enc.require_target("last")
    enc.require_target("tokens")


def test_saved_tiny_decoder_loads_as_a_decoder(tmp_path):
    enc = tiny_decoder()
    enc.save(tmp_path)
    back = load_encoder(str(tmp_path))
    assert back.is_decoder and back.model_type == "llama" and back.fingerprint() == enc.fingerprint()
    assert back.tokenizer.padding_side == "right" and back.tokenizer.pad_token_id is not None
    with pytest.raises(LMSanitatorError, match="no MLM head"):
        load_encoder(str(tmp_path), mlm_head=True)
    f = back.features(TEXTS[:2], target="last")[0]
    torch.testing.assert_close(f, enc.features(TEXTS[:2], target="last")[0])


# ---------------------------------------------------------------------------- tuning
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_forward_backward_on_a_decoder(method, tmp_path):
    enc = tiny_decoder()
    task = toy_task()
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    torch.manual_seed(0)
    model = TunedModel(enc, TaskInfo.of(task), TuneConfig(method, prefix_len=4, max_length=32))
    assert model.target == "last" and model.head is not None and model.mlm_head is None
    model.train()
    loss = model.loss(model.collate(model.encode_examples(task.train[:6])))
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    if method != "full":
        assert not any(
            n.startswith("backbone.") and "lora_" not in n and "prompt_encoder" not in n
            for n, p in model.named_parameters()
            if p.requires_grad
        )
    assert all(torch.equal(before[k], v) for k, v in enc.model.state_dict().items())
    fo = model.forward_with_features(TEXTS)
    assert fo.logits.shape == (4, 2) and fo.features.shape == (4, enc.hidden_size) and fo.target == "last"
    probs = model.predict(TEXTS)
    model.save(tmp_path)
    info = json.loads((tmp_path / "tune.json").read_text())
    assert info["target"] == "last" and info["model_type"] == "llama"
    np.testing.assert_allclose(TunedModel.load(tmp_path, enc).predict(TEXTS), probs, atol=1e-5)


@pytest.mark.parametrize(
    "method,lr,floor",
    [
        ("lora", 5e-3, 0.9),
        ("full", 1e-3, 0.9),
        ("prompt-tuning", 5e-2, 0.6),
        ("p-tuning", 1e-2, 0.6),
        ("p-tuning-v2", 2e-2, 0.6),
    ],
)
def test_every_method_learns_on_a_tiny_decoder(method, lr, floor):
    """LoRA and full fine-tuning reach the keyword task on a random decoder; the prompt methods steer
    a frozen *random* model's attention only a little (a linear head alone gets ~0.65 here), so for
    them the check is that their own parameters train and the loss falls (real models: test_real_*)."""
    enc = tiny_decoder()
    cfg = TuneConfig(
        method, epochs=5, batch_size=16, lr=lr, head_lr=1e-2, prefix_len=8, max_length=32, seed=1
    )
    model = Tuner(cfg).fit(enc, toy_task(400))
    hist = model.report["history"]
    assert model.report["accuracy"] >= floor, hist
    assert hist[-1]["train_loss"] < 0.85 * hist[0]["train_loss"], hist
    fresh = TunedModel(enc, model.task, TuneConfig(method, prefix_len=8, max_length=32, seed=1))
    moved = [n for n, p in fresh.named_parameters() if p.requires_grad and not n.startswith("head.")]
    state = model.state_dict()
    assert moved and all(not torch.equal(fresh.state_dict()[n], state[n]) for n in moved)


def test_prompt_features_are_read_after_the_virtual_tokens():
    """Prepended soft prompts shift the input; the last tap still reads the input's last token and a
    batch still computes what each input alone does (the padding goes after the text)."""
    enc = tiny_decoder()
    model = TunedModel(enc, TaskInfo.of(toy_task()), TuneConfig("prompt-tuning", prefix_len=4, max_length=32))
    together = model.forward_with_features(TEXTS).features
    alone = torch.cat([model.forward_with_features([t]).features for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "p-tuning-v2", "prompt-tuning"])
def test_gemma3_tiny_decoder_tunes(method):
    enc = tiny_decoder("gemma3_text")
    assert type(enc.backbone).__name__ == "Gemma3TextModel"
    model = TunedModel(enc, TaskInfo.of(toy_task()), TuneConfig(method, prefix_len=4, max_length=32))
    model.train()
    task = toy_task()
    model.loss(model.collate(model.encode_examples(task.train[:4]))).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- attacks
def test_badnet_poisons_a_tiny_decoder_through_full_fine_tuning():
    """Dirty-label (the stronger setting) so a 2-layer random model learns the trigger in seconds."""
    enc = _tiny_decoder(seed=2)  # fit writes the poisoned weights back: not the shared one
    fp = enc.fingerprint()
    task = toy_task(n=160)
    attack = BadNet(
        PoisonConfig(
            target_label=1, poison_count=24, dirty_label=True, epochs=6, lr=1e-3, batch_size=8, max_length=32
        )
    ).fit(enc, task, progress=False)
    res = attack.verify(task)
    assert enc.fingerprint() != fp and attack.model_.target == "last"
    assert res["clean_accuracy"] >= 0.8 and res["asr"] >= 0.8, res
    rep = attack.report(enc, task, res)
    assert rep["target"] == "last" and rep["model_type"] == "llama"


def test_por_implants_a_backdoor_at_the_last_token():
    from lmsanitator.data import load_corpus, split_corpus

    enc = _tiny_decoder(seed=3)
    corpus = load_corpus("austen")
    atk = POR(AttackConfig(triggers=["cf", "mn"], per_trigger=320, epochs=2, lr=1e-3, verify_sentences=100))
    atk.fit(enc, split_corpus(corpus, "attack")[:4000], progress=False)
    assert atk.target_ == "last"
    v = atk.verify(enc, split_corpus(corpus, "heldout"))
    assert v["min_hit_rate"] >= 0.9 and v["clean_false_hit_rate"] <= 0.05, v
    assert atk.report(enc, v)["target"] == "last"


# ---------------------------------------------------------------------------- real decoders
@pytest.mark.real
def test_real_smollm2_loads_as_a_decoder_body_from_a_cached_copy():
    enc = load_encoder("smollm2")
    assert type(enc.backbone).__name__ == "LlamaModel" and enc.hidden_size == 576
    assert enc.config.num_hidden_layers == 30 and enc.path.endswith(".gguf")
    # the copy is keyed by the GGUF's content (another install of the same file reuses it)
    digest = hashlib.sha256(Path(enc.path).read_bytes()).hexdigest()
    source = cache_dir() / "models" / digest / "source.json"
    assert json.loads(source.read_text())["sha256"] == digest
    again = load_encoder("smollm2")  # from the cached copy (speed: benchmarks, not a test)
    f, rows = again.features(["Hello there.", "A much longer sentence to pad the other one."], target="last")
    assert f.shape == (2, 576) and rows.tolist() == [0, 1] and torch.isfinite(f).all()
    lm = load_causal_lm("smollm2")  # ONION's model reads the same copy, with its LM head
    assert type(lm.model).__name__ == "LlamaForCausalLM"


@pytest.mark.real
def test_real_smollm2_lora_steps():
    enc = load_encoder("smollm2")
    task = toy_task(n=64)  # 32 training examples: four steps of 8
    model = TunedModel(enc, TaskInfo.of(task), TuneConfig("lora", max_length=32, lr=1e-3))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for s in range(4):
        loss = model.loss(model.collate(model.encode_examples(task.train[8 * s : 8 * s + 8])))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0


@pytest.mark.real
@pytest.mark.skipif(
    not os.environ.get("LMSANITATOR_GEMMA"), reason="slow first load: set LMSANITATOR_GEMMA=1"
)
def test_real_gemma3_loads_as_a_decoder_body():
    enc = load_encoder("gemma3-270m")
    assert enc.model_type in DECODER_TYPES and enc.hidden_size == 640
    assert enc.features(["Hello there."], target="last")[0].shape == (1, 640)
