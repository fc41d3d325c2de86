import pytest
import torch
import transformers as tf

from lmsanitator.core.architectures import ARCHITECTURES, architecture
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import ENCODER_TYPES, TINY_ARCHS, Encoder, load_encoder, special_ids, tiny_encoder


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_taps_on_every_architecture(arch):
    enc = tiny_encoder(arch)
    texts = ["the quick brown fox [MASK] over the dog", "a [MASK] cat"]
    b = enc.tokenize(texts)
    h = enc.forward(b)
    assert h.shape[-1] == enc.hidden_size == 32

    f, rows = enc.tap(h, b, "cls")
    assert f.shape == (2, 32) and rows.tolist() == [0, 1]
    cls_pos = [(row == enc.tokenizer.cls_token_id).nonzero().item() for row in b["input_ids"]]
    for i, p in enumerate(cls_pos):
        assert torch.equal(f[i], h[i, p])
    if arch == "xlnet":  # [CLS] closes the sequence, and left padding keeps it in the last slot
        assert cls_pos == [b["input_ids"].shape[1] - 1] * 2
    else:
        assert cls_pos == [0, 0]

    f, rows = enc.tap(h, b, "mask")
    mask_pos = [(row == enc.tokenizer.mask_token_id).nonzero().item() for row in b["input_ids"]]
    for i, p in enumerate(mask_pos):
        assert torch.equal(f[i], h[i, p])

    f, rows = enc.tap(h, b, "tokens")
    specials = set(special_ids(enc.tokenizer))
    expected = sum(
        1
        for i, row in enumerate(b["input_ids"])
        for j, t in enumerate(row.tolist())
        if b["attention_mask"][i, j] and t not in specials
    )
    assert f.shape == (expected, 32)
    assert rows.tolist() == sorted(rows.tolist())


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_inputs_embeds_path_matches_ids_path(arch):
    enc = tiny_encoder(arch)
    b = enc.tokenize(["one two three four", "five"])
    h_ids = enc.forward(b)
    emb = torch.nn.functional.embedding(b["input_ids"], enc.input_embeddings())
    h_emb = enc.forward(b, inputs_embeds=emb)
    m = b["attention_mask"].bool()
    if arch == "roberta":  # position ids from embeds ignore padding; compare the unpadded row only
        m = m & (m.sum(dim=1, keepdim=True) == m.shape[1])
    assert torch.allclose(h_ids[m], h_emb[m], atol=1e-4)


def test_mask_target_without_mask_token_is_an_error():
    enc = tiny_encoder("bert")
    b = enc.tokenize(["no mask here"])
    h = enc.forward(b)
    with pytest.raises(LMSanitatorError, match="no \\[MASK\\]"):
        enc.tap(h, b, "mask")
    with pytest.raises(LMSanitatorError, match="unknown target"):
        enc.require_target("pooler")


def test_bad_models(tmp_path):
    with pytest.raises(LMSanitatorError, match="does not exist"):
        load_encoder("./no/such/folder")
    with pytest.raises(LMSanitatorError, match="no config.json"):
        load_encoder(str(tmp_path))
    gpt = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100))
    gpt.save_pretrained(tmp_path / "gpt")
    with pytest.raises(LMSanitatorError, match="not a Transformer encoder"):
        load_encoder(str(tmp_path / "gpt"))


def test_saved_folder_round_trip(tiny_bert_dir):
    enc = load_encoder(str(tiny_bert_dir))
    assert enc.has_mlm_head and enc.hidden_size == 32
    bare = load_encoder(str(tiny_bert_dir), mlm_head=False)
    assert not bare.has_mlm_head
    assert enc.fingerprint() == bare.fingerprint()  # same encoder weights, head or not
    with pytest.raises(LMSanitatorError, match="no MLM head"):
        bare.mlm_logits(torch.zeros(1, 32))
    logits = enc.mlm_logits(enc.forward(enc.tokenize(["a [MASK] b"]))[0, :2])
    assert logits.shape == (2, 30522)


@pytest.mark.real
def test_bundled_models_load():
    m = load_encoder("minilm")
    assert m.model_type == "bert" and m.hidden_size == 384 and not m.has_mlm_head
    assert m.input_embeddings().shape == (30522, 384)
    s = load_encoder("splade-tiny")
    assert s.has_mlm_head and s.hidden_size == 128
    sre = load_encoder("minilm-sre")
    assert sre.fingerprint() != m.fingerprint()
    f, _ = m.features(["A real sentence about tea.", "Another one, about the weather."], "cls")
    assert f.shape == (2, 384) and torch.isfinite(f).all()


@pytest.mark.parametrize("name", ["minilm", "splade-tiny"])
def test_target_features_skip_only_what_the_tap_drops(name):
    """The last layer run for the read row only gives the full pass's rows (real weights, both
    targets, with and without input embeddings, gradients included)."""
    enc = load_encoder(name)
    enc.model.eval()
    assert enc._last_bert_layer() is not None
    m = enc.tokenizer.mask_token
    b = enc.tokenize(
        [f"It is a truth universally {m} that a single man", f"a {m} cat", f"{m} and more words here"]
    )
    for target in ("cls", "mask"):
        full, rows = enc.tap(enc.forward(b), b, target)
        fast, fast_rows = enc.target_features(b, target)
        assert torch.equal(rows, fast_rows)
        torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    emb = enc.model.get_input_embeddings()(b["input_ids"]).detach().requires_grad_(True)
    g = []
    for fast_path in (False, True):
        f = (
            enc.target_features(b, "cls", inputs_embeds=emb)[0]
            if fast_path
            else enc.tap(enc.forward(b, inputs_embeds=emb), b, "cls")[0]
        )
        g.append(torch.autograd.grad(f.pow(2).sum(), emb)[0])
    torch.testing.assert_close(g[1], g[0], atol=1e-4, rtol=1e-4)
    enc.model.train()  # dropout: the full pass
    assert torch.equal(enc.target_features(b, "tokens")[1], enc.tap(enc.forward(b), b, "tokens")[1])


def test_target_features_fall_back_where_the_layer_is_not_bert_style():
    enc = tiny_encoder("xlnet")
    enc.model.eval()
    b = enc.tokenize(["a [MASK] cat", "the dog"])
    assert enc._last_bert_layer() is None
    assert torch.equal(enc.target_features(b, "cls")[0], enc.tap(enc.forward(b), b, "cls")[0])


# every model type load_encoder accepted before the architecture table existed
_PRE_TABLE_ENCODER_TYPES = {
    "bert", "roberta", "xlm-roberta", "camembert", "albert", "deberta", "deberta-v2", "mpnet",
    "xlnet", "electra", "distilbert", "ernie", "megatron-bert", "roformer", "modernbert", "nezha",
}  # fmt: skip


def test_every_encoder_type_has_an_architecture_row():
    assert _PRE_TABLE_ENCODER_TYPES <= set(ENCODER_TYPES)
    for t in ENCODER_TYPES:
        assert architecture(t).model_type == t and architecture(t).kind == "encoder"
    assert set(TINY_ARCHS) <= set(ARCHITECTURES)
    with pytest.raises(LMSanitatorError, match="unsupported model type 'gpt2'"):
        architecture("gpt2")


def _tiny_model(model_type: str) -> Encoder:
    """A tiny DistilBERT / CamemBERT around the (BERT) tiny tokenizer, which hands out token type ids."""
    if model_type == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    else:
        cfg = tf.CamembertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=0,
        )
    tok = tiny_encoder("bert").tokenizer
    return Encoder(model_type, model_type, tf.AutoModel.from_config(cfg).eval(), tok, has_mlm_head=False)


@pytest.mark.parametrize("model_type", ["distilbert", "camembert", "bert"])
def test_forward_passes_token_type_ids_only_where_the_table_says(model_type):
    """The architecture row decides: DistilBERT and CamemBERT take no token type ids (a BERT
    tokenizer still makes them); BERT does."""
    enc = tiny_encoder("bert") if model_type == "bert" else _tiny_model(model_type)
    assert enc.model_type == model_type
    seen = {}
    hook = enc.backbone.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    b = enc.tokenize(["a sentence", "and its pair"], ["one", "two"])
    assert "token_type_ids" in b
    h = enc.forward(b)
    hook.remove()
    assert h.shape[:2] == b["input_ids"].shape
    assert ("token_type_ids" in seen) == architecture(model_type).token_types == (model_type == "bert")


def test_a_model_type_outside_the_table_keeps_the_neutral_defaults():
    enc = tiny_encoder("bert")
    enc.model.config.model_type = "my-encoder"
    assert not enc.bert_like and not enc.cls_last and enc._last_bert_layer() is None
    assert "token_type_ids" in enc.model_inputs(enc.tokenize(["x"]))


def test_weights_changed_drops_the_cached_fingerprint():
    enc = tiny_encoder("bert")
    before = enc.fingerprint()
    with torch.no_grad():
        enc.input_embeddings()[0] += 1
    assert enc.fingerprint() == before  # cached
    enc.weights_changed()
    assert enc.fingerprint() != before
