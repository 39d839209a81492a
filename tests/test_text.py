"""Text encoders (nextscale.text) with a tiny random T5 encoder and a tokenizer trained here (no download)."""

import pytest
import torch

from nextscale.errors import InputError
from nextscale.text import (
    T5TextEncoder,
    TextEncoder,
    TextFeatures,
    check_text_features,
    encode_negative,
    encode_prompts,
    features_from_rows,
    pack_features,
)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "a red fox in the snow at golden hour",
    "a photo of a cat on a sofa",
    "the sea under a purple sky",
    "café crème brûlée on a plate",
    "東京の夜景と雨",
    "ein Hund läuft im Park",
    "портрет женщины",
    "🦊 emoji fox",
]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    # T5's special-token layout: pad 0, eos 1, unk 2; every encoding ends with </s> (like T5's tokenizer)
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A saved tiny T5 encoder + tokenizer directory (d_model 32)."""
    tok = _tokenizer()
    cfg = transformers.T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(cfg)
    d = tmp_path_factory.mktemp("t5") / "tiny-t5"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def enc(t5_dir):
    return T5TextEncoder.from_pretrained(t5_dir, device="cpu")


PROMPTS = ["a red fox in the snow", "", "東京の夜景 café", "портрет"]


def test_lens_and_layout(enc):
    ids, mask = enc.tokenize(PROMPTS)
    assert ids.shape == (4, 512) and mask.shape == (4, 512)  # padded to max_length like the reference
    text = enc(PROMPTS)
    assert isinstance(text, TextFeatures)
    assert text.lens == mask.sum(-1).tolist()
    assert text.lens[1] == 1  # the empty prompt still has its end-of-sequence token
    for b, n in enumerate(text.lens):
        assert ids[b, n - 1].item() == 1 and ids[b, n:].eq(0).all()  # lens include EOS, then padding
    assert text.kv_compact.shape == (sum(text.lens), 32) and text.kv_compact.dtype == torch.float32
    assert text.cu_seqlens.dtype == torch.int32
    assert text.cu_seqlens.tolist() == [0] + torch.tensor(text.lens).cumsum(0).tolist()
    assert text.max_seqlen == max(text.lens)
    assert enc.channels == 32
    check_text_features(text)


def test_packing_equals_unpadded_rows(enc):
    """Each packed row equals the encoder run on that prompt alone without any padding (masking is exact)."""
    text = enc(PROMPTS)
    ids, mask = enc.tokenize(PROMPTS)
    rows = text.kv_compact.split(text.lens)
    for b, n in enumerate(text.lens):
        alone = enc.model(input_ids=ids[b : b + 1, :n]).last_hidden_state[0].float()
        torch.testing.assert_close(rows[b], alone, atol=1e-5, rtol=1e-5)


def test_batch_equals_one_by_one(enc):
    text = enc(PROMPTS)
    singles = [enc(p) for p in PROMPTS]
    assert [s.lens[0] for s in singles] == text.lens
    torch.testing.assert_close(text.kv_compact, torch.cat([s.kv_compact for s in singles]), atol=1e-6, rtol=1e-6)


def test_non_ascii_is_not_unknown(enc):
    ids, mask = enc.tokenize(["東京の夜景", "портрет", "crème"])
    unk = enc.tokenizer.unk_token_id
    for b in range(3):
        n = int(mask[b].sum())
        assert n >= 2 and not ids[b, : n - 1].eq(unk).all()


def test_truncation_keeps_eos(t5_dir):
    short = T5TextEncoder.from_pretrained(t5_dir, device="cpu", max_length=6)
    text = short([" ".join(["fox"] * 40), "cat"])
    ids, _ = short.tokenize([" ".join(["fox"] * 40)])
    assert text.lens[0] == 6 and ids[0, 5].item() == 1
    assert text.kv_compact.shape[0] == 6 + text.lens[1]


def test_from_hf_cache_by_name(t5_dir, tmp_path):
    """A model id is looked up in the Hugging Face cache layout (models--org--name/snapshots/<rev>)."""
    snap = tmp_path / "hub" / "models--tiny--t5" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in t5_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (tmp_path / "hub" / "models--tiny--t5" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--t5" / "refs" / "main").write_text("0123abcd")
    enc = T5TextEncoder.from_pretrained("tiny/t5", cache_dir=tmp_path / "hub", device="cpu")
    assert enc(["a fox"]).kv_compact.shape[1] == 32
    with pytest.raises(InputError) as e:
        T5TextEncoder.from_pretrained("tiny/absent", cache_dir=tmp_path / "hub", device="cpu")
    msg = str(e.value)
    assert msg.startswith("name 'tiny/absent'") and "local_files_only=False" in msg and "\n" not in msg


def test_missing_transformers_one_line(monkeypatch, t5_dir):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("no transformers")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError, match=r"pip install nextscale\[t2i\]$"):
        T5TextEncoder.from_pretrained(t5_dir)


def test_default_dtype_cpu_float32(enc):
    assert next(enc.model.parameters()).dtype == torch.float32
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_protocol_and_custom_encoder():
    """Any callable returning TextFeatures plugs in; its output is checked."""

    def bag_of_chars(prompts):
        rows = [torch.tensor([[float(ord(c) % 7), 1.0] for c in p + "$"]) for p in prompts]
        return features_from_rows(rows)

    assert isinstance(bag_of_chars, TextEncoder)
    text = encode_prompts(bag_of_chars, ["ab", ""])
    assert text.lens == [3, 1] and text.cu_seqlens.tolist() == [0, 3, 4] and text.max_seqlen == 3

    with pytest.raises(InputError, match="^text_encoder returned 1 rows for 2 prompts"):
        encode_prompts(lambda ps: bag_of_chars(ps[:1]), ["a", "b"])
    with pytest.raises(InputError, match="^text_encoder output must be TextFeatures"):
        encode_prompts(lambda ps: torch.zeros(2, 3), ["a", "b"])
    bad = bag_of_chars(["abc"])
    bad.lens = [2]
    with pytest.raises(InputError, match=r"^text_encoder output\.lens"):
        encode_prompts(lambda ps: bad, ["abc"])
    for p in (None, [], [1], 3):
        with pytest.raises(InputError, match="^prompt must be a string"):
            encode_prompts(bag_of_chars, p)


def test_encode_negative(enc):
    assert encode_negative(enc, None, 3) is None
    assert encode_negative(enc, "", 3) is None  # empty negative -> the model's learned unconditional rows
    assert encode_negative(enc, ["", ""], 2) is None
    one = enc(["blurry"])
    neg = encode_negative(enc, "blurry", 3)
    assert neg.lens == one.lens * 3 and neg.cu_seqlens.tolist() == [0, one.lens[0], 2 * one.lens[0], 3 * one.lens[0]]
    torch.testing.assert_close(neg.kv_compact, one.kv_compact.repeat(3, 1))
    per_row = encode_negative(enc, ["blurry", "dark sky"], 2)
    assert per_row.lens == enc(["blurry", "dark sky"]).lens
    with pytest.raises(InputError, match="^negative_prompt must be one string or 3 strings"):
        encode_negative(enc, ["a", "b"], 3)
    with pytest.raises(InputError, match="^negative_prompt mixes"):
        encode_negative(enc, ["a", ""], 2)


def test_pack_features_checks():
    f = torch.randn(2, 4, 3)
    text = pack_features(f, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))
    torch.testing.assert_close(text.kv_compact, torch.cat([f[0, :2], f[1]]))
    with pytest.raises(InputError, match="no tokens"):
        pack_features(f, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(InputError, match="left"):
        pack_features(f, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(InputError, match="disagree"):
        pack_features(f, torch.ones(2, 3))
