"""The tokenizers of chapter 8: tokens as bytes, small tokenizers trained offline on the book's
prompts, and the hub's.

* :class:`TokenCodec` -- a tokenizer's tokens as the bytes they stand for, whatever its
  convention (byte-level BPE's ``Ġ``, SentencePiece's ``▁`` and ``<0xHH>``);

* :data:`TOKENIZERS`, :func:`train_bpe_tokenizer`, :func:`train_sentencepiece_style_tokenizer`
  -- the committed tokenizers of ``data/crossvocab`` and how they were trained (rebuilt by
  ``python -m specdec.crossvocab``);
* :func:`load_tokenizer` -- one of them (a registered model's own tokenizer is
  :func:`specdec.loaders.load_tokenizer`'s).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

__all__ = ["TokenCodec", "TOKENIZERS", "data_dir", "train_bpe_tokenizer", "train_sentencepiece_style_tokenizer", "load_tokenizer"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte as a printable character (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPACE_MARK = "\u2581"  # SentencePiece's "▁"


def _backend(tokenizer):
    """The ``tokenizers.Tokenizer`` behind a transformers tokenizer (or the object itself)."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no fast (Rust) tokenizer behind it; load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True) or pass a tokenizers.Tokenizer"
        )
    return backend


def _decoder_types(spec) -> list[dict]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [d for sub in spec.get("decoders", []) for d in _decoder_types(sub)]
    return [spec]


class TokenCodec:
    """What each token id of one tokenizer means as text: bytes, and back.

    ``vocab_size`` is the number of rows of the model's output layer, which may exceed the
    tokenizer's size (Phi-3-mini: 32,064 logits for 32,011 tokens); ids without a token get
    no key. ``keys[i]`` is the token's bytes, the string ``"special:<content>"`` for a
    special token (matched between tokenizers by name, never part of the text), or ``None``.
    """

    def __init__(self, tokenizer, vocab_size: int | None = None, name: str = "tokenizer"):
        self.backend = _backend(tokenizer)
        self.name = name
        spec = json.loads(self.backend.to_str())
        kinds = [d.get("type") for d in _decoder_types(spec.get("decoder"))]
        if "ByteLevel" in kinds:
            self.style = "byte-level"
        elif "Metaspace" in kinds or any(
            d.get("type") == "Replace" and _SPACE_MARK in json.dumps(d.get("pattern"), ensure_ascii=False) for d in _decoder_types(spec.get("decoder"))
        ):
            self.style = "sentencepiece"
        else:
            self.style = "plain"
        self.byte_fallback = "ByteFallback" in kinds
        self._metaspace_split = (spec.get("pre_tokenizer") or {}).get("type") == "Metaspace"
        n_tok = self.backend.get_vocab_size(with_added_tokens=True)
        vocab = self.backend.get_vocab(with_added_tokens=True)
        n_ids = max(vocab.values()) + 1
        self.vocab_size = n_ids if vocab_size is None else int(vocab_size)
        if self.vocab_size < n_ids:
            raise ValueError(
                f"{name}: the model scores {self.vocab_size:,} tokens but the tokenizer has ids up to "
                f"{n_ids - 1:,} ({n_tok:,} tokens); pass the model's vocabulary size (its logits' last dimension)"
            )
        added = self.backend.get_added_tokens_decoder()
        self.keys: list[bytes | str | None] = [None] * self.vocab_size
        fallback_ids = set()
        for token, i in vocab.items():
            if i in added and added[i].special:
                self.keys[i] = f"special:{added[i].content}"
            elif i in added:
                self.keys[i] = added[i].content.encode("utf-8")
            else:
                self.keys[i] = self._token_to_bytes(token)
                if self.style == "sentencepiece" and _BYTE_FALLBACK.match(token):
                    fallback_ids.add(i)
        # One canonical id per key: the lowest, except that a regular token beats a byte-fallback
        # token spelling the same byte (SentencePiece has both "▁" and "<0x20>").
        self.key_to_id: dict[bytes | str, int] = {}
        for i, key in enumerate(self.keys):
            if key is None:
                continue
            j = self.key_to_id.get(key)
            if j is None or (j in fallback_ids and i not in fallback_ids):
                self.key_to_id[key] = i
        self.byte_ids = {k[0]: i for k, i in self.key_to_id.items() if isinstance(k, bytes) and len(k) == 1}
        probe = "Hello, world!  x = 1\n"
        if self.decode_bytes(self.encode_text(probe)) != probe.encode():
            raise ValueError(
                f"{name}: cannot re-tokenise text faithfully with this tokenizer (it adds or drops characters, "
                "e.g. a prefix space); cross-vocabulary drafting needs a byte-level BPE or SentencePiece-style "
                "tokenizer that round-trips text"
            )

    def _token_to_bytes(self, token: str) -> bytes:
        if self.style == "byte-level":
            if all(c in _BYTE_DECODER for c in token):
                return bytes(_BYTE_DECODER[c] for c in token)
            return token.encode("utf-8")
        if self.style == "sentencepiece":
            m = _BYTE_FALLBACK.match(token)
            if m and self.byte_fallback:
                return bytes([int(m.group(1), 16)])
            return token.replace(_SPACE_MARK, " ").encode("utf-8")
        return token.encode("utf-8")

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def n_tokens(self) -> int:
        """Canonical tokens (distinct keys): what an overlap is counted over."""
        return len(self.key_to_id)

    def token_bytes(self, i: int) -> bytes:
        """The text bytes of token ``i`` (empty for a special token)."""
        key = self.keys[i]
        return key if isinstance(key, bytes) else b""

    def decode_bytes(self, ids) -> bytes:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a piece of text, as it stands (no special tokens, no dummy prefix space)."""
        if not text:
            return []
        if self.style == "sentencepiece":
            # Skip the normaliser, whose job includes prepending a space to the whole text:
            # a piece of text in the middle of a sequence must not get one.
            s = text.replace(" ", _SPACE_MARK)
            pieces = [p for p in re.split(f"(?={_SPACE_MARK})", s) if p] if self._metaspace_split else [s]
            return [t.id for p in pieces for t in self.backend.model.tokenize(p)]
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids for raw bytes: valid UTF-8 as text, any other byte as its single-byte token."""
        out: list[int] = []
        while data:
            try:
                out += self.encode_text(data.decode("utf-8"))
                break
            except UnicodeDecodeError as err:
                out += self.encode_text(data[: err.start].decode("utf-8"))
                bad = data[err.start]
                if bad not in self.byte_ids:
                    raise ValueError(f"{self.name} has no token for the byte 0x{bad:02x}") from None
                out.append(self.byte_ids[bad])
                data = data[err.start + 1 :]
        return out


#: The committed tokenizers of ``data/crossvocab``: name -> (prompt domains trained on, vocabulary size, style).
TOKENIZERS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "target-1000": (("code", "conversation", "summarisation"), 1000, "byte-level"),
    "draft-600": (("code", "conversation", "summarisation"), 600, "byte-level"),
    "draft-600-prose": (("summarisation",), 600, "byte-level"),
    "draft-600-chat": (("conversation",), 600, "byte-level"),
    "draft-600-code": (("code",), 600, "byte-level"),
    "draft-600-sp": (("code", "conversation", "summarisation"), 600, "sentencepiece"),
}

_SPECIAL = "<|endoftext|>"


def data_dir() -> Path:
    """``data/crossvocab`` in the book's repository."""
    from .provenance import repo_root

    return repo_root() / "data" / "crossvocab"


def train_bpe_tokenizer(texts, vocab_size: int, special_tokens=(_SPECIAL,)):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts``: a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"a byte-level vocabulary needs at least {256 + len(special_tokens)} tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def train_sentencepiece_style_tokenizer(texts, vocab_size: int):
    """A Llama-2-style tokenizer trained on ``texts``: BPE over characters with ``▁`` for a
    space, the 256 ``<0xHH>`` byte-fallback tokens, and ``<unk>``, ``<s>``, ``</s>`` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>"]
    n_fixed = len(specials) + 256
    if vocab_size <= n_fixed + 100:
        raise ValueError(f"vocab_size must exceed {n_fixed + 100} (specials, byte tokens and some merges), got {vocab_size}")
    texts = list(texts)
    chars = sorted({c for t in texts for c in t.replace(" ", _SPACE_MARK)})
    tmp = Tokenizer(models.BPE())
    tmp.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE_MARK, prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, initial_alphabet=chars, show_progress=False, limit_alphabet=len(chars))
    tmp.train_from_iterator(texts, trainer)
    spec = json.loads(tmp.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    spec["model"].update(vocab=vocab, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    spec["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, s in enumerate(specials)
    ]
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": _SPACE_MARK}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return Tokenizer.from_str(json.dumps(spec))


def load_tokenizer(name: str):
    """A committed tokenizer of ``data/crossvocab`` (see :data:`TOKENIZERS`), as a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer

    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; the committed ones are: {', '.join(TOKENIZERS)}")
    path = data_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild the tokenizers with `python -m specdec.crossvocab`")
    return Tokenizer.from_file(str(path))
