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
unknown bytes as ``<0xHH>``. :class:`specdec.vocabs.TokenCodec` undoes both conventions, so
``Ġthe`` and ``▁the`` both become ``b" the"``.

For offline experiments small byte-level BPE tokenizers trained on the book's prompt texts
(:mod:`specdec.vocabs`; the committed ones are in ``data/crossvocab``, rebuilt by
``python -m specdec.crossvocab``) and a *teacher-derived* synthetic draft over another
vocabulary (:class:`specdec.synthetic.TeacherDraftLM`), whose agreement with a random target is
meaningful, are importable from here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from .cache import CachedLM
from .synthetic import TeacherDraftLM  # noqa: F401  (the chapter builds its synthetic draft as cv.TeacherDraftLM)
from .sampling import (  # noqa: F401  first_tokens and goodness_of_fit: the chapter calls them as cv.*
    SamplingParams,
    acceptance_probability,
    first_tokens,
    goodness_of_fit,
    probs_from_logits,
    sample,
)
from .vocabs import (TOKENIZERS, TokenCodec, data_dir, load_tokenizer,  # noqa: F401
                     train_bpe_tokenizer, train_sentencepiece_style_tokenizer)

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
    "tli_acceptance",
    "tli_acceptances",
    "first_tokens",
    "goodness_of_fit",
]

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
        return self.next_distributions(seq, [params])[0]

    def next_distributions(self, seq: torch.Tensor, settings) -> list[torch.Tensor]:
        """:meth:`next_distribution` under each sampling setting in ``settings``, from one
        step of the draft."""
        logits = self.mapping.restrict_logits(self._draft_logits(self.draft_ids(seq)))
        return [self.mapping.to_target(probs_from_logits(logits, params)) for params in settings]

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
    return tli_acceptances(target, drafter, seqs, start, [params])[0]


@torch.no_grad()
def tli_acceptances(target, drafter: TLIDrafter, seqs, start: int, settings) -> list[dict]:
    """:func:`tli_acceptance` under each sampling setting in ``settings`` (one dict each), from
    one pass of the target over each text and one draft step per position."""
    out = [{"alpha": [], "bound": []} for _ in settings]
    device = next(target.parameters()).device
    for seq in seqs:
        seq = torch.as_tensor(seq, dtype=torch.long)
        logits = target(input_ids=seq[None].to(device)).logits[0].float().cpu()
        drafter.reset()
        for j in range(start, len(seq)):
            qs = drafter.next_distributions(seq[:j], settings)
            for res, params, q in zip(out, settings, qs):
                p = probs_from_logits(logits[j - 1], params)
                res["alpha"].append(float(acceptance_probability(p, q)))
                res["bound"].append(float(drafter.mapping.target_mass(p)))
    return [{key: np.array(values) for key, values in res.items()} for res in out]


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
