import dataclasses
import json

import numpy as np
import pytest

from lmsanitator.baselines import ONION, ONIONConfig
from lmsanitator.cli.main import main
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import CausalLM, load_causal_lm


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 with the bundled WordPiece tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from lmsanitator.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=tok.vocab_size,
            n_positions=128,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        )
    )
    d = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir):
    return load_causal_lm(str(tiny_gpt2_dir))


def test_batched_perplexity_equals_one_by_one(tiny_lm):
    onion = ONION(ONIONConfig(batch_size=4), lm=tiny_lm)
    texts = ["a", "the movie was fine", "it rained all day and then the sun came out again", "ok then"]
    batched = onion.perplexities(texts)
    single = np.array([onion.perplexities([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, rtol=1e-4)  # padding and masking do not leak
    assert np.all(batched > 1.0)
    words, f = onion.suspicion(texts[1])
    p = onion.perplexities(texts[1:2] + ["movie was fine", "the was fine", "the movie fine", "the movie was"])
    np.testing.assert_allclose(f, p[0] - p[1:], rtol=1e-4)


class _KeywordLM(ONION):
    """Perplexity jumps by 100 for every 'mn' and by 1 for every 'zz' (a deterministic stand-in)."""

    def perplexities(self, texts):
        return np.array([10.0 + 100 * t.split().count("mn") + t.split().count("zz") for t in texts])


def test_purify_removes_words_above_the_threshold():
    onion = _KeywordLM(ONIONConfig(threshold=5.0), lm=object())
    assert onion.purify_one("the mn movie zz was mn fine") == ("the movie zz was fine", ["mn", "mn"])
    low = _KeywordLM(ONIONConfig(threshold=0.5), lm=object())
    assert low.purify(["the mn movie zz"]) == ["the movie"]
    assert low.purify_one("mn") == ("mn", [])  # one word: nothing to compare with
    assert low.purify_one("mn mn") == ("mn mn", [])  # never an empty text


def test_config_and_loader_errors(tmp_path):
    with pytest.raises(LMSanitatorError):
        ONIONConfig(threshold=float("nan"))
    with pytest.raises(LMSanitatorError):
        ONIONConfig(batch_size=1)
    with pytest.raises(LMSanitatorError, match="max tokens"):
        ONIONConfig(max_tokens=4)
    c = ONIONConfig(threshold=0.5)
    assert (c.lm, c.batch_size, c.max_words, c.max_tokens) == ("smollm2", 32, 60, 128)
    assert c.changed() == ["threshold"] and ONIONConfig.from_dict(c.to_dict()) == c
    assert all(ONIONConfig.help(f.name) for f in dataclasses.fields(ONIONConfig))
    with pytest.raises(LMSanitatorError, match="encoder"):
        load_causal_lm("minilm")
    with pytest.raises(LMSanitatorError, match="neither"):
        load_causal_lm(str(tmp_path))


def test_cli_purify_and_bad_input(tmp_path, tiny_gpt2_dir, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"text": "the movie mn was great"}) + "\n" + json.dumps({"text": "fine"}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    args = ["baseline", "onion", "--input", str(inp), "--output", str(out), "--lm", str(tiny_gpt2_dir)]
    assert main(args + ["--threshold", "1e9"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [{"text": "the movie mn was great", "removed": []}, {"text": "fine", "removed": []}]
    assert main(args + ["--threshold=-1e9", "--overwrite"]) == 0  # every word "suspicious": text kept whole
    assert json.loads(out.read_text().splitlines()[0])["text"] == "the movie mn was great"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\n')
    o2 = tmp_path / "o2.jsonl"
    assert (
        main(["baseline", "onion", "--input", str(bad), "--output", str(o2), "--lm", str(tiny_gpt2_dir)]) == 2
    )
    assert main(["baseline", "onion", "--task", "tweets-binary"]) == 2
    assert not o2.exists()
    err = capsys.readouterr().err
    assert "'text' must be a string" in err and "evaluate mode needs" in err


@pytest.mark.real
def test_real_smollm2_removes_a_rare_word_trigger():
    onion = ONION(ONIONConfig(threshold=0.0), lm=load_causal_lm("smollm2"))
    text, removed = onion.purify_one("I really loved this movie mn and the acting was great")
    assert "mn" in removed and "mn" not in text.split()
    assert len(text.split()) >= 6  # most of the sentence survives
    assert isinstance(onion.lm, CausalLM)
