"""BERT-uncased WordPiece tokenizer for FLAVA's text side, built from ``tokenizers`` components.

The vocabulary ships with the package (``assets/bert-base-uncased-vocab.txt``) and is verified by
its sha256 before use, so the token ids always match the published BERT / FLAVA checkpoints. The
pipeline is the BERT one: normaliser (clean text, Chinese characters, lowercase, strip accents),
BERT pre-tokenizer, WordPiece with ``[UNK]``, ``[CLS] A [SEP] (B [SEP])`` template with token type
ids 0 / 1, and the WordPiece decoder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

__all__ = ["FlavaTokenizer", "load_tokenizer"]

VOCAB_FILENAME = "bert-base-uncased-vocab.txt"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
)
_SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
_PADDING_MODES = ("longest", "max_length")
# Longest word (in characters) WordPiece splits; longer words become [UNK], as in BERT.
_MAX_INPUT_CHARS_PER_WORD = 100
# Truncation / padding configurations kept as ready-made backend copies.
_MAX_CONFIGURED = 16


def _default_vocab_resource() -> Traversable:
    """Return the packaged vocabulary file as an ``importlib.resources`` traversable."""
    return importlib.resources.files("flava.data").joinpath("assets", VOCAB_FILENAME)


def _check_vocab_sha256(data: bytes, name: str, expected: str = VOCAB_SHA256) -> None:
    """Raise ``RuntimeError`` when ``data`` (read from ``name``) does not hash to ``expected``."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise RuntimeError(
            f"vocabulary file {name} is corrupted or modified (sha256 {digest}, expected "
            f"{expected}); reinstall the flava package"
        )


def _parse_vocab(data: bytes, name: str) -> dict[str, int]:
    """Parse a one-token-per-line vocabulary file into a token -> id mapping (id = line index)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"vocabulary file {name} is not valid UTF-8 ({err})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for index, line in enumerate(lines):
        vocab[line.removesuffix("\r")] = index
    if not vocab:
        raise ValueError(f"vocabulary file {name} is empty")
    missing = [token for token in _SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"vocabulary file {name} lacks the special tokens {', '.join(missing)}")
    return vocab


def _build_backend(vocab: Mapping[str, int]) -> Tokenizer:
    """Assemble the BERT-uncased ``tokenizers`` pipeline around a WordPiece vocabulary."""
    backend = Tokenizer(
        WordPiece(
            dict(vocab),
            unk_token=UNK_TOKEN,
            continuing_subword_prefix="##",
            max_input_chars_per_word=_MAX_INPUT_CHARS_PER_WORD,
        )
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0",
        pair=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0 $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, vocab[CLS_TOKEN]), (SEP_TOKEN, vocab[SEP_TOKEN])],
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # Registered as special so that they are never split when they appear literally in the text
    # and are dropped by ``decode(skip_special_tokens=True)``; they keep their vocabulary ids.
    backend.add_special_tokens(list(_SPECIAL_TOKENS))
    return backend


def _as_text_list(text: object, name: str) -> list[str]:
    """Return ``text`` as a list of strings (a single string gives a list of one)."""
    if isinstance(text, str):
        return [text]
    if isinstance(text, bytes | bytearray) or not isinstance(text, Iterable):
        raise TypeError(f"{name} must be a str or a sequence of str, got {type(text).__name__}")
    items = list(text)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must contain only str, got an item of {type(item).__name__}")
    return items


def _word_ids(encoding: Encoding) -> list[int]:
    """Return word ids, -1 for special / pad tokens; the second sentence's follow the first's."""
    word_ids = encoding.word_ids
    sequence_ids = encoding.sequence_ids
    first = [w for w, s in zip(word_ids, sequence_ids, strict=True) if s == 0 and w is not None]
    offset = max(first) + 1 if first else 0
    out = []
    for word, sequence in zip(word_ids, sequence_ids, strict=True):
        if word is None or sequence is None:
            out.append(-1)
        else:
            out.append(word + offset if sequence == 1 else word)
    return out


class FlavaTokenizer:
    """BERT-uncased WordPiece tokenizer returning padded ``torch`` batches."""

    def __init__(self, vocab: Mapping[str, int], source: str = "<dict>") -> None:
        """Build the tokenizer from a token -> id mapping holding the five BERT special tokens."""
        missing = [token for token in _SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {', '.join(missing)}")
        self._backend = _build_backend(vocab)
        self._configured: dict[tuple[int | None, int | None], Tokenizer] = {}
        self.source = source
        self.vocab_size: int = max(vocab.values()) + 1
        self.pad_token_id: int = vocab[PAD_TOKEN]
        self.unk_token_id: int = vocab[UNK_TOKEN]
        self.cls_token_id: int = vocab[CLS_TOKEN]
        self.sep_token_id: int = vocab[SEP_TOKEN]
        self.mask_token_id: int = vocab[MASK_TOKEN]
        self.special_token_ids: frozenset[int] = frozenset(vocab[t] for t in _SPECIAL_TOKENS)

    def _backend_for(self, truncate_to: int | None, pad_to: int | None) -> Tokenizer:
        """Return a backend copy set up for one truncation / padding configuration."""
        key = (truncate_to, pad_to)
        backend = self._configured.get(key)
        if backend is None:
            backend = Tokenizer.from_str(self._backend.to_str())
            if truncate_to is not None:
                backend.enable_truncation(
                    truncate_to, stride=0, strategy="longest_first", direction="right"
                )
            backend.enable_padding(
                direction="right",
                pad_id=self.pad_token_id,
                pad_type_id=0,
                pad_token=PAD_TOKEN,
                length=pad_to,
            )
            if len(self._configured) >= _MAX_CONFIGURED:
                self._configured.clear()
            self._configured[key] = backend
        return backend

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        max_length: int = 77,
        padding: str = "longest",
        truncation: bool = True,
        return_word_ids: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tokenise a sentence or a batch (optionally of pairs) into padded long / bool tensors."""
        texts = _as_text_list(text, "text")
        pairs = None if text_pair is None else _as_text_list(text_pair, "text_pair")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if padding not in _PADDING_MODES:
            raise ValueError(f"padding must be one of {_PADDING_MODES}, got {padding!r}")
        min_length = 2 if pairs is None else 3
        if not isinstance(max_length, int) or isinstance(max_length, bool):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
        if max_length < min_length:
            raise ValueError(
                f"max_length must be at least {min_length} (room for the special tokens), "
                f"got {max_length}"
            )
        pad_to = max_length if padding == "max_length" else None
        backend = self._backend_for(max_length if truncation else None, pad_to)
        inputs: list[Any] = texts if pairs is None else list(zip(texts, pairs, strict=True))
        encodings = backend.encode_batch(inputs, add_special_tokens=True)

        length = pad_to if pad_to is not None else len(encodings[0].ids) if encodings else 0
        if any(len(e.ids) != length for e in encodings):
            raise ValueError(
                f"a sequence is longer than max_length={max_length} with truncation=False and "
                "padding='max_length'; enable truncation or use padding='longest'"
            )
        batch = len(encodings)

        def tensor(rows: list[list[int]], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(rows, dtype=dtype).reshape(batch, length)

        out = {
            "input_ids": tensor([e.ids for e in encodings], torch.long),
            "attention_mask": tensor([e.attention_mask for e in encodings], torch.long),
            "token_type_ids": tensor([e.type_ids for e in encodings], torch.long),
            "special_tokens_mask": tensor([e.special_tokens_mask for e in encodings], torch.bool),
        }
        if return_word_ids:
            out["word_ids"] = tensor([_word_ids(e) for e in encodings], torch.long)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Turn token ids back into text (WordPiece pieces joined, special tokens dropped)."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(
                    f"decode expects a 1-D tensor of ids, got shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        """Return the id of a vocabulary token; ``KeyError`` if it is not in the vocabulary."""
        index = self._backend.token_to_id(token)
        if index is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return index

    def id_to_token(self, index: int) -> str:
        """Return the vocabulary token of an id; ``KeyError`` if the id is out of range."""
        token = self._backend.id_to_token(int(index))
        if token is None:
            raise KeyError(f"id {index} is not in the vocabulary")
        return token

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the configured backend copies (they are rebuilt on demand)."""
        state = self.__dict__.copy()
        state["_configured"] = {}
        return state

    def __repr__(self) -> str:
        """Describe the tokenizer by its vocabulary size and source."""
        return f"FlavaTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


@functools.lru_cache(maxsize=1)
def _load_default() -> FlavaTokenizer:
    """Load (once) the packaged BERT-uncased vocabulary after checking its sha256."""
    resource = _default_vocab_resource()
    try:
        data = resource.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"vocabulary file {resource} is missing; reinstall the flava package"
        ) from None
    _check_vocab_sha256(data, str(resource))
    return FlavaTokenizer(_parse_vocab(data, str(resource)), source=VOCAB_FILENAME)


def load_tokenizer(vocab_file: str | os.PathLike[str] | None = None) -> FlavaTokenizer:
    """Return the packaged BERT-uncased tokenizer (cached), or one built from ``vocab_file``."""
    if vocab_file is None:
        return _load_default()
    path = Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist or is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"vocabulary file {path} is empty")
    return FlavaTokenizer(_parse_vocab(data, str(path)), source=str(path))
