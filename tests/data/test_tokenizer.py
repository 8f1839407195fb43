"""Tests for the BERT-uncased tokenizer, checked against transformers' BertTokenizerFast."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import pytest
import torch

from flava.data import tokenizer as tokenizer_module
from flava.data.tokenizer import FlavaTokenizer, load_tokenizer

SENTENCES = [
    "A photo of a cat.",
    "Héllo Wörld! Crème brûlée, naïve café.",
    "ÀÉÎÕÜ ñ ç ß",
    "你好，世界！This is 中文 mixed with English.",
    "Numbers: 3.14159, 1,000,000 and 42nd street; phone 555-0199.",
    "Punctuation!!! (brackets) [squares] {braces} <angles> @user #tag $5 & 100% ...",
    "unaffable unbelievably antidisestablishmentarianism",
    "  leading and trailing   whitespace\t\ttabs\nnewlines  ",
    "emoji 😀 and symbols © ™ ° ± ∑",
    "a [MASK] token and a [SEP] in the middle",
    "",
    " ".join(["long"] * 40 + ["sentence"] * 60),
]
PAIRS = [
    ("What is in the picture?", "A dog playing with a ball in the park."),
    ("", "Only the second sentence."),
    ("Only the first sentence.", ""),
    (" ".join(["first"] * 50), " ".join(["second"] * 20)),
    (" ".join(["first"] * 10), " ".join(["second"] * 90)),
    ("Héllo 你好", "unaffable café"),
]


def _vocab_path() -> Path:
    """Return the path of the packaged vocabulary file."""
    return Path(str(tokenizer_module._default_vocab_resource()))


@pytest.fixture(scope="module")
def tok() -> FlavaTokenizer:
    """Return the default tokenizer."""
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_tok():
    """Return transformers' BERT tokenizer built from the same vocabulary file (no download)."""
    transformers = pytest.importorskip("transformers")
    cls = transformers.BertTokenizerFast
    path = str(_vocab_path())
    # transformers 5 takes the vocabulary as ``vocab`` (and silently ignores ``vocab_file``).
    if "vocab" in inspect.signature(cls.__init__).parameters:
        ref = cls(vocab=path, do_lower_case=True)
    else:
        ref = cls(vocab_file=path, do_lower_case=True)
    assert len(ref) == 30522, "reference tokenizer did not load the vocabulary"
    return ref


def _reference(hf_tok, text, text_pair, max_length, padding, truncation=True) -> dict:
    """Encode with transformers into lists."""
    enc = hf_tok(
        text,
        text_pair,
        max_length=max_length,
        padding=padding,
        truncation="longest_first" if truncation else False,
        return_token_type_ids=True,
        return_attention_mask=True,
        return_special_tokens_mask=True,
    )
    return enc


def _assert_matches(ours: dict, ref) -> None:
    """Check ids, type ids and masks against the reference encoding."""
    assert ours["input_ids"].tolist() == ref["input_ids"]
    assert ours["attention_mask"].tolist() == ref["attention_mask"]
    assert ours["token_type_ids"].tolist() == ref["token_type_ids"]
    assert ours["special_tokens_mask"].tolist() == [
        [bool(v) for v in row] for row in ref["special_tokens_mask"]
    ]


def test_vocab_and_special_ids(tok):
    assert tok.vocab_size == 30522
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id) == (0, 100, 101)
    assert (tok.sep_token_id, tok.mask_token_id) == (102, 103)
    assert tok.special_token_ids == frozenset({0, 100, 101, 102, 103})
    assert tok.token_to_id("[MASK]") == 103
    assert tok.token_to_id("the") == 1996
    assert tok.id_to_token(1996) == "the"
    with pytest.raises(KeyError):
        tok.token_to_id("definitely-not-a-token")


def test_default_is_cached():
    assert load_tokenizer() is load_tokenizer()


@pytest.mark.parametrize("max_length", [77, 16, 512])
@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_single_sentences_match_transformers(tok, hf_tok, max_length, padding):
    ours = tok(SENTENCES, max_length=max_length, padding=padding)
    ref = _reference(hf_tok, SENTENCES, None, max_length, padding)
    _assert_matches(ours, ref)
    for value in ours.values():
        assert value.shape[0] == len(SENTENCES)
    if padding == "max_length":
        assert ours["input_ids"].shape[1] == max_length


@pytest.mark.parametrize("sentence", SENTENCES)
def test_each_sentence_alone_matches_transformers(tok, hf_tok, sentence):
    ours = tok(sentence)
    assert ours["input_ids"].shape[0] == 1
    _assert_matches(ours, _reference(hf_tok, [sentence], None, 77, "longest"))


@pytest.mark.parametrize("max_length", [77, 12, 3])
@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_pairs_match_transformers(tok, hf_tok, max_length, padding):
    first, second = map(list, zip(*PAIRS, strict=True))
    ours = tok(first, second, max_length=max_length, padding=padding)
    _assert_matches(ours, _reference(hf_tok, first, second, max_length, padding))
    assert ours["input_ids"].shape[1] <= max_length


def test_no_truncation_matches_transformers(tok, hf_tok):
    long = SENTENCES[-1]
    ours = tok([long, "short"], max_length=16, truncation=False)
    ref = _reference(hf_tok, [long, "short"], None, 16, "longest", truncation=False)
    _assert_matches(ours, ref)
    assert ours["input_ids"].shape[1] > 16
    with pytest.raises(ValueError, match="truncation"):
        tok([long], max_length=16, truncation=False, padding="max_length")


def test_output_types_and_masks(tok):
    out = tok(["a cat", "a much longer sentence here", ""], max_length=10, padding="max_length")
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert out[key].dtype == torch.long and out[key].shape == (3, 10)
    special = out["special_tokens_mask"]
    assert special.dtype == torch.bool and special.shape == (3, 10)
    ids = out["input_ids"]
    is_special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (ids == tok.pad_token_id)
    assert torch.equal(special, is_special)
    assert torch.equal(out["attention_mask"].bool(), ids != tok.pad_token_id)
    assert out["input_ids"][2, :2].tolist() == [101, 102]  # empty string -> [CLS] [SEP]


def test_empty_string_and_empty_batch(tok):
    assert tok("")["input_ids"].tolist() == [[101, 102]]
    assert tok("", "")["input_ids"].tolist() == [[101, 102, 102]]
    assert tok([])["input_ids"].shape == (0, 0)
    assert tok([], padding="max_length", max_length=8)["input_ids"].shape == (0, 8)


def test_word_ids_group_word_pieces(tok):
    out = tok(["unaffable cats", "hello"], return_word_ids=True)
    ids = out["input_ids"][0].tolist()
    pieces = [tok.id_to_token(i) for i in ids]
    assert pieces == ["[CLS]", "una", "##ffa", "##ble", "cats", "[SEP]"]
    assert out["word_ids"].dtype == torch.long
    assert out["word_ids"][0].tolist() == [-1, 0, 0, 0, 1, -1]
    assert out["word_ids"][1].tolist() == [-1, 0, -1, -1, -1, -1]  # padding is -1 too


def test_word_ids_of_pairs_do_not_collide(tok):
    out = tok(["unaffable cat", ""], ["hello unaffable", "x y"], return_word_ids=True)
    word_ids = out["word_ids"]
    type_ids = out["token_type_ids"]
    special = out["special_tokens_mask"]
    assert torch.equal(word_ids == -1, special)
    for row in range(2):
        first = set(word_ids[row][(type_ids[row] == 0) & ~special[row]].tolist())
        second = set(word_ids[row][(type_ids[row] == 1) & ~special[row]].tolist())
        assert first.isdisjoint(second)
    assert word_ids[0].tolist() == [-1, 0, 0, 0, 1, -1, 2, 3, 3, 3, -1]
    assert word_ids[1].tolist()[:5] == [-1, -1, 0, 1, -1]


def test_decode_round_trip(tok, hf_tok):
    for text in ["a photo of a cat.", "unaffable people, 42 of them!", "hello world"]:
        ids = tok(text)["input_ids"][0]
        assert tok.decode(ids) == text
        assert tok.decode(ids.tolist()) == text
    ids = tok("Héllo Wörld")["input_ids"][0]
    assert tok.decode(ids) == "hello world"
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] hello world [SEP]"
    padded = tok(["a cat", "a much longer sentence"], padding="longest")["input_ids"][0]
    assert tok.decode(padded) == "a cat"
    for sentence in SENTENCES:
        ids = tok(sentence)["input_ids"][0].tolist()
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    with pytest.raises(ValueError):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="max")
    with pytest.raises(ValueError, match="max_length"):
        tok("a", max_length=1)
    with pytest.raises(ValueError, match="max_length"):
        tok("a", "b", max_length=2)
    with pytest.raises(ValueError, match="pairs"):
        tok(["a", "b"], ["c"])
    with pytest.raises(TypeError):
        tok([1, 2])
    with pytest.raises(TypeError):
        tok(b"bytes")


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    texts = ["a cat", "unaffable dogs"]
    for key, value in tok(texts, return_word_ids=True).items():
        assert torch.equal(clone(texts, return_word_ids=True)[key], value)


def test_sha_mismatch_is_reported(tmp_path, monkeypatch):
    altered = tmp_path / "bert-base-uncased-vocab.txt"
    data = _vocab_path().read_bytes()
    altered.write_bytes(data.replace(b"\nthe\n", b"\nteh\n", 1))
    with pytest.raises(RuntimeError, match="reinstall") as info:
        tokenizer_module._check_vocab_sha256(altered.read_bytes(), str(altered))
    assert str(altered) in str(info.value) and "\n" not in str(info.value)

    monkeypatch.setattr(tokenizer_module, "_default_vocab_resource", lambda: altered)
    with pytest.raises(RuntimeError, match="reinstall"):
        tokenizer_module._load_default.__wrapped__()

    monkeypatch.setattr(tokenizer_module, "_default_vocab_resource", lambda: tmp_path / "gone.txt")
    with pytest.raises(FileNotFoundError, match="reinstall"):
        tokenizer_module._load_default.__wrapped__()


def test_explicit_vocab_file(tmp_path):
    custom = tmp_path / "vocab.txt"
    custom.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n##s\n", encoding="utf-8")
    small = load_tokenizer(custom)
    assert small.vocab_size == 8 and small.cls_token_id == 2 and small.unk_token_id == 1
    assert small("Hello worlds cat")["input_ids"].tolist() == [[2, 5, 6, 7, 1, 3]]

    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_tokenizer(empty)
    no_specials = tmp_path / "no_specials.txt"
    no_specials.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special tokens"):
        load_tokenizer(no_specials)


def test_batch_of_many_sentences(tok, hf_tok):
    texts = [f"sentence number {i} with {'word ' * (i % 13)}" for i in range(300)]
    ours = tok(texts, max_length=20, padding="max_length")
    _assert_matches(ours, _reference(hf_tok, texts, None, 20, "max_length"))
