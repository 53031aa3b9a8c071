"""Speculative decoding when the draft speaks another vocabulary (chapter 8).

Plain speculative decoding hands the draft's token ids to the target, so both models must
share one vocabulary. Two ways around that are implemented here, both as drafters that
plug into :func:`specdec.decoding.speculative_generate` unchanged, because they return
tokens (and, for the first, probabilities) already in the *target's* vocabulary:

* :class:`TLIDrafter` -- token-level intersection (Timor et al., 2025). Tokens are matched
  through the text they stand for (:class:`VocabMapping`); the draft's distribution is
  restricted to the tokens both vocabularies contain, renormalised, and carried over to the
  target's ids. That is a distribution over the target's vocabulary from which the drafted
  token really was sampled -- all that the rejection step of chapter 3 needs -- so the
  output follows the target's distribution exactly, under sampling as well as greedy.
* :class:`StringMatchDrafter` -- string-level exact match (as Hugging Face's universal
  assisted generation). The draft writes text greedily in its own tokens, the text is
  re-tokenised by the target's tokenizer, and the target keeps the longest prefix that
  agrees with its own choice. The proposals are deterministic, so the loop treats them as
  one-hot distributions, like the n-gram drafter's.

Both drafters feed the draft model the committed text in *its* tokenisation. Committed
target tokens that have a twin in the draft's vocabulary map to it one to one; a run of
tokens without a twin (a residual or bonus token the draft could not have proposed) is
re-tokenised with the draft's tokenizer (:class:`_DraftSync`). Re-tokenising a piece of
text need not give the tokens the draft would have produced itself; that can only lower
the acceptance rate, never change the output distribution, since the target verifies.

Tokens are compared by their *bytes*: byte-level BPE marks a leading space as ``Ġ`` and
maps every byte to a printable character, SentencePiece marks it as ``▁`` and spells
unknown bytes as ``<0xHH>``. :class:`TokenCodec` undoes both conventions, so ``Ġthe``
and ``▁the`` both become ``b" the"``.

For offline experiments the module also trains small byte-level BPE tokenizers on the
book's prompt texts (:func:`train_bpe_tokenizer`; the committed ones are in
``data/crossvocab``) and builds a *teacher-derived* synthetic draft over another
vocabulary (:class:`TeacherDraftLM`) whose agreement with a random target is meaningful.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import CachedLM
from .sampling import (  # noqa: F401  first_tokens and goodness_of_fit: the chapter calls them as cv.*
    SamplingParams,
    acceptance_probability,
    first_tokens,
    goodness_of_fit,
    probs_from_logits,
    sample,
)

__all__ = [
    "TokenCodec",
    "VocabMapping",
    "TLIDrafter",
    "StringMatchDrafter",
    "TeacherDraftLM",
    "train_bpe_tokenizer",
    "train_sentencepiece_style_tokenizer",
    "TOKENIZERS",
    "data_dir",
    "load_tokenizer",
    "load_hub_tokenizer",
    "tli_acceptance",
    "first_tokens",
    "goodness_of_fit",
]

# --------------------------------------------------------------------------------------------
# Tokens as bytes
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The intersection of two vocabularies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabMapping:
    """Which draft token is which target token: the token-level intersection.

    ``draft_to_target[d]`` is the target id of the token spelling the same bytes as draft
    token ``d`` (``-1`` if the target has none), and ``target_to_draft`` the reverse.
    """

    draft_to_target: torch.Tensor
    target_to_draft: torch.Tensor
    n_draft_tokens: int
    n_target_tokens: int

    @classmethod
    def from_codecs(cls, draft: TokenCodec, target: TokenCodec) -> "VocabMapping":
        d2t = torch.full((draft.vocab_size,), -1, dtype=torch.long)
        t2d = torch.full((target.vocab_size,), -1, dtype=torch.long)
        for key, d in draft.key_to_id.items():
            t = target.key_to_id.get(key)
            if t is not None:
                d2t[d], t2d[t] = t, d
        return cls(d2t, t2d, draft.n_tokens, target.n_tokens)

    @property
    def draft_vocab_size(self) -> int:
        return len(self.draft_to_target)

    @property
    def target_vocab_size(self) -> int:
        return len(self.target_to_draft)

    @property
    def shared_draft_ids(self) -> torch.Tensor:
        return (self.draft_to_target >= 0).nonzero().squeeze(-1)

    @property
    def shared_target_ids(self) -> torch.Tensor:
        return self.draft_to_target[self.shared_draft_ids]

    @property
    def n_shared(self) -> int:
        return int((self.draft_to_target >= 0).sum())

    @property
    def draft_coverage(self) -> float:
        """Share of the draft's tokens that the target also has."""
        return self.n_shared / self.n_draft_tokens

    @property
    def target_coverage(self) -> float:
        """Share of the target's tokens that the draft also has."""
        return self.n_shared / self.n_target_tokens

    @property
    def jaccard(self) -> float:
        return self.n_shared / (self.n_draft_tokens + self.n_target_tokens - self.n_shared)

    def subset(self, keep: float, seed: int = 0) -> "VocabMapping":
        """The same mapping with only a random share ``keep`` of the shared pairs kept
        (the others are treated as absent from one side): a smaller intersection, on demand."""
        if not 0 <= keep <= 1:
            raise ValueError(f"keep must be a share between 0 and 1, got {keep}")
        shared = self.shared_draft_ids
        g = torch.Generator().manual_seed(seed)
        n_keep = round(keep * len(shared))
        if n_keep < 1:
            raise ValueError(f"keep={keep} leaves no shared token out of {len(shared)}; keep at least one")
        kept = shared[torch.randperm(len(shared), generator=g)[:n_keep]]
        d2t = torch.full_like(self.draft_to_target, -1)
        t2d = torch.full_like(self.target_to_draft, -1)
        d2t[kept] = self.draft_to_target[kept]
        t2d[self.draft_to_target[kept]] = kept
        return VocabMapping(d2t, t2d, self.n_draft_tokens, self.n_target_tokens)

    def restrict_logits(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """Draft logits with every token outside the intersection set to -inf.

        Any softmax of these (``probs_from_logits``, with temperature and filters) is the
        draft's distribution restricted to the intersection and renormalised; masking before
        top-k/top-p (rather than after) keeps the support from becoming empty.
        """
        if draft_logits.shape[-1] != self.draft_vocab_size:
            raise ValueError(
                f"draft logits cover {draft_logits.shape[-1]:,} tokens but the mapping was built for "
                f"{self.draft_vocab_size:,}; build the TokenCodec with the draft model's vocabulary size"
            )
        return draft_logits.float().masked_fill(self.draft_to_target < 0, float("-inf"))

    def to_target(self, q_draft: torch.Tensor) -> torch.Tensor:
        """Carry a distribution over draft ids ``(..., V_d)`` to target ids ``(..., V_t)``.

        Mass on draft tokens outside the intersection is dropped, not renormalised: pass a
        distribution that lives on the intersection (``restrict_logits``) to get one that sums to 1.
        """
        out = q_draft.new_zeros(*q_draft.shape[:-1], self.target_vocab_size)
        out[..., self.shared_target_ids] = q_draft[..., self.shared_draft_ids]
        return out

    def target_mass(self, p_target: torch.Tensor) -> torch.Tensor:
        """``p(I)``: the target's probability of a token the draft can propose -- an upper
        bound on the acceptance rate of token-level intersection."""
        return p_target[..., self.shared_target_ids].sum(-1)


# --------------------------------------------------------------------------------------------
# Keeping the draft's own token sequence in step with the target's
# --------------------------------------------------------------------------------------------


def _complete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _DraftSync:
    """The committed text in the draft's tokens, updated incrementally.

    Target tokens with a twin map one to one. A target token without one starts a run that
    is re-tokenised with the draft's tokenizer once its bytes form complete UTF-8 (or the
    text ends). ``bound[i]`` is the draft length after the first ``i`` target tokens where
    that is a clean cut, ``-1`` inside a run; after a rollback the draft side resumes from
    the last clean cut.
    """

    def __init__(self, mapping: VocabMapping, draft: TokenCodec, target: TokenCodec):
        self.t2d = mapping.target_to_draft.tolist()
        self.draft, self.target = draft, target
        self.reset()

    def reset(self) -> None:
        self.t: list[int] = []
        self.d: list[int] = []
        self.bound: list[int] = [0]

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        new = seq.tolist()
        m = 0
        for a, b in zip(self.t, new):
            if a != b:
                break
            m += 1
        while self.bound[m] < 0:
            m -= 1
        del self.t[m:], self.bound[m + 1 :], self.d[self.bound[m] :]
        pending: list[int] = []
        for tok in new[m:]:
            self.t.append(tok)
            twin = self.t2d[tok]
            if twin >= 0 and not pending:
                self.d.append(twin)
                self.bound.append(len(self.d))
                continue
            pending.append(tok)
            self.bound.append(-1)
            data = self.target.decode_bytes(pending)
            if _complete_utf8(data):
                self.d += self.draft.encode_bytes(data)
                self.bound[-1] = len(self.d)
                pending = []
        if pending:  # the text ends inside a character: give the draft what there is
            self.d += self.draft.encode_bytes(self.target.decode_bytes(pending))
            self.bound[-1] = len(self.d)
        return torch.tensor(self.d, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# The two drafters
# --------------------------------------------------------------------------------------------


class _CrossVocabDrafter:
    def __init__(self, draft, mapping: VocabMapping, draft_codec: TokenCodec, target_codec: TokenCodec, name: str):
        same_sizes = mapping.draft_vocab_size == draft_codec.vocab_size and mapping.target_vocab_size == target_codec.vocab_size
        if not same_sizes or any(
            draft_codec.keys[d] != target_codec.keys[t]
            for d, t in zip(mapping.shared_draft_ids.tolist(), mapping.shared_target_ids.tolist())
        ):
            raise ValueError("the mapping was built from other tokenizers than the codecs passed with it")
        if mapping.n_shared == 0:
            raise ValueError("the two vocabularies share no token: there is nothing the draft could propose")
        self.lm = draft if hasattr(draft, "logits") else CachedLM(draft)
        self.mapping, self.draft_codec, self.target_codec, self.name = mapping, draft_codec, target_codec, name
        self.sync = _DraftSync(mapping, draft_codec, target_codec)

    def reset(self) -> None:
        self.lm.reset()
        self.sync.reset()

    def draft_ids(self, seq: torch.Tensor) -> torch.Tensor:
        """The committed target tokens ``seq``, in the draft's tokens."""
        return self.sync(torch.as_tensor(seq).cpu())

    def _draft_logits(self, draft_seq: torch.Tensor) -> torch.Tensor:
        if len(draft_seq) == 0:
            raise ValueError("the text so far is empty in the draft's tokens; start from a non-empty prompt")
        return self.lm.logits(draft_seq, n_last=1)[0]


class TLIDrafter(_CrossVocabDrafter):
    """Token-level intersection: draft in the draft's vocabulary restricted to the tokens the
    target also has; return target ids and the distributions over the target's vocabulary.

    ``draft`` is a causal LM (wrapped in :class:`~specdec.cache.CachedLM`) or any object with
    ``logits(seq, n_last)`` and ``reset()`` over the draft's ids.
    """

    def __init__(self, draft, mapping, draft_codec, target_codec, name: str = "tli"):
        super().__init__(draft, mapping, draft_codec, target_codec, name)

    def next_distribution(self, seq: torch.Tensor, params: SamplingParams = SamplingParams()) -> torch.Tensor:
        """The distribution over the target's vocabulary that the drafter proposes the token
        after ``seq`` (target ids) from."""
        logits = self._draft_logits(self.draft_ids(seq))
        return self.mapping.to_target(probs_from_logits(self.mapping.restrict_logits(logits), params))

    def propose(self, seq, k, params, generator=None):
        draft_seq = self.draft_ids(seq)
        tokens, probs = [], []
        for _ in range(k):
            q_draft = probs_from_logits(self.mapping.restrict_logits(self._draft_logits(draft_seq)), params)
            x = sample(q_draft, generator)
            tokens.append(self.mapping.draft_to_target[x])
            probs.append(self.mapping.to_target(q_draft))
            draft_seq = torch.cat([draft_seq, x.view(1)])
        if not tokens:
            return torch.empty(0, dtype=torch.long), None
        return torch.stack(tokens), torch.stack(probs)


class StringMatchDrafter(_CrossVocabDrafter):
    """String-level exact match: the draft writes ``k`` tokens greedily in its own vocabulary,
    the target's tokenizer re-tokenises that text, and the first ``k`` target ids are proposed.

    The proposals are a deterministic function of the text so far, so they are returned
    without distributions (one-hot, as for the n-gram drafter). Under greedy decoding the
    target then accepts exactly the tokens that equal its own argmax.
    """

    def __init__(self, draft, mapping, draft_codec, target_codec, name: str = "string-match"):
        super().__init__(draft, mapping, draft_codec, target_codec, name)

    def propose(self, seq, k, params=None, generator=None):
        draft_seq = self.draft_ids(seq)
        drafted = []
        for _ in range(k):
            x = self._draft_logits(draft_seq).argmax(-1)
            drafted.append(int(x))
            draft_seq = torch.cat([draft_seq, x.view(1)])
        text = self.draft_codec.decode_bytes(drafted)
        ids = self.target_codec.encode_bytes(text)[:k]
        return torch.tensor(ids, dtype=torch.long), None


# --------------------------------------------------------------------------------------------
# A synthetic draft over another vocabulary, derived from the target
# --------------------------------------------------------------------------------------------


class TeacherDraftLM:
    """A draft "model" over the draft's vocabulary whose guesses come from the target.

    Asked for the next draft token after a draft-token context, it decodes the context to
    text, tokenises it for the target, takes the target's next-token distribution ``p``, and
    pushes it to the draft's vocabulary: each target token's mass goes to the first draft
    token of that token's text (what a draft modelling the same text would put there).
    Gaussian noise of standard deviation ``noise`` on the log-probabilities, fixed per
    context, makes it an imperfect draft. It runs the target without a cache, so it is a
    tool for measuring acceptance, not for speed.
    """

    def __init__(self, target, draft_codec: TokenCodec, target_codec: TokenCodec, noise: float = 1.0, seed: int = 0):
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.target, self.draft_codec, self.target_codec = target, draft_codec, target_codec
        self.noise, self.seed = float(noise), int(seed)
        first = torch.full((target_codec.vocab_size,), -1, dtype=torch.long)
        for t in range(target_codec.vocab_size):
            data = target_codec.token_bytes(t)
            if data:
                first[t] = draft_codec.encode_bytes(data)[0]
        self.first_draft_token = first
        self.vocab_size = draft_codec.vocab_size

    def reset(self) -> None:
        pass

    @torch.inference_mode()
    def logits(self, seq: torch.Tensor, n_last: int = 1) -> torch.Tensor:
        if n_last != 1:
            raise ValueError("TeacherDraftLM scores one position at a time (n_last=1)")
        ids = self.target_codec.encode_bytes(self.draft_codec.decode_bytes(seq))
        if not ids:
            raise ValueError("the context has no text for the target to read")
        device = next(self.target.parameters()).device
        p = self.target(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().softmax(-1).cpu()
        valid = self.first_draft_token >= 0
        push = torch.zeros(self.vocab_size).index_add_(0, self.first_draft_token[valid], p[valid])
        g = torch.Generator().manual_seed((hash(tuple(seq.tolist())) ^ self.seed) & 0x7FFFFFFF)
        return (torch.log(push + 1e-9) + self.noise * torch.randn(self.vocab_size, generator=g))[None]


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def tli_acceptance(target, drafter: TLIDrafter, seqs, start: int, params: SamplingParams = SamplingParams()) -> dict:
    """Per-position acceptance rate of a TLI drafter on texts the target wrote.

    For every sequence in ``seqs`` (target ids) and every position from ``start`` on, the
    target's distribution ``p`` and the drafter's ``q`` (over the target's vocabulary) give
    ``alpha = sum min(p, q)``, and ``p(I)``, the target's mass on tokens the draft can propose.
    Returns ``{"alpha": array, "bound": array}``.
    """
    alphas, bounds = [], []
    device = next(target.parameters()).device
    for seq in seqs:
        seq = torch.as_tensor(seq, dtype=torch.long)
        logits = target(input_ids=seq[None].to(device)).logits[0].float().cpu()
        drafter.reset()
        for j in range(start, len(seq)):
            p = probs_from_logits(logits[j - 1], params)
            q = drafter.next_distribution(seq[:j], params)
            alphas.append(float(acceptance_probability(p, q)))
            bounds.append(float(drafter.mapping.target_mass(p)))
    return {"alpha": np.array(alphas), "bound": np.array(bounds)}


# --------------------------------------------------------------------------------------------
# Tokenizers: trained offline ones, and the hub's
# --------------------------------------------------------------------------------------------

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
    return Path(__file__).resolve().parents[2] / "data" / "crossvocab"


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


def load_hub_tokenizer(spec):
    """The tokenizer of a registered model (a :class:`specdec.registry.ModelSpec`), from the hub's
    cache, or :class:`~specdec.registry.ModelUnavailableError` saying how to get it."""
    from .loaders import how_to_get, load_smollm2_tokenizer
    from .registry import ModelUnavailableError

    if spec.source != "hub":
        return load_smollm2_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec.hub_id)
    except (OSError, ValueError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"cannot load the tokenizer of {spec.label} ({spec.hub_id}): it is not in the local Hugging Face "
            f"cache and the hub cannot be reached. To get it: {how_to_get(spec)}. (The loader said: {reason})"
        ) from None


def _training_texts(domains) -> list[str]:
    from .prompts import prompt_file

    texts = []
    for domain in domains:
        with open(prompt_file(domain), encoding="utf-8") as f:
            texts += [json.loads(line)["prompt"] for line in f if line.strip()]
    return texts


def main(argv: list[str] | None = None) -> int:
    """Rebuild the committed tokenizers of ``data/crossvocab`` from ``data/prompts``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m specdec.crossvocab", description=main.__doc__)
    parser.parse_args(argv)
    data_dir().mkdir(parents=True, exist_ok=True)
    for name, (domains, vocab_size, style) in TOKENIZERS.items():
        texts = _training_texts(domains)
        train = train_bpe_tokenizer if style == "byte-level" else train_sentencepiece_style_tokenizer
        tok = train(texts, vocab_size)
        path = data_dir() / f"{name}.json"
        tok.save(str(path))
        print(f"{path.name}: {tok.get_vocab_size():,} tokens, {style}, trained on {', '.join(domains)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
