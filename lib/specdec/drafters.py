"""Who proposes the K tokens (chapter 4).

A drafter has one method, :meth:`Drafter.propose`: given the text so far, return up to
``k`` token ids and the distribution each was drawn from. A model-free drafter returns
``None`` for the distributions: its proposals are deterministic, i.e. one-hot, and the
loop builds the one-hot rows itself in the target's vocabulary. Drafters that can also draft
token trees (chapter 11) have ``propose_tree``, used by :func:`specdec.trees.tree_generate`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .cache import CachedLM
from .sampling import SamplingParams, probs_from_logits, sample
from .tokentree import TokenTree, grow_tree

__all__ = ["Drafter", "ModelDrafter", "NGramDrafter"]


class Drafter(Protocol):
    name: str

    def reset(self) -> None:
        """Forget any state from a previous generation."""

    def propose(
        self, seq: torch.Tensor, k: int, params: SamplingParams, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(tokens (k',), probs (k', V) or None)`` with ``0 <= k' <= k``.

        ``seq`` is the text so far (a list of token ids, or a 1-D tensor). ``probs`` is
        ``None`` when the proposals are deterministic (one-hot).
        """


class ModelDrafter:
    """A small causal LM drafts autoregressively from its own KV cache.

    The cache is never rolled back by hand: :class:`CachedLM` catches up to whatever
    sequence it is given. After a rejection that means cropping the rejected tokens;
    after a fully accepted round it means feeding the two tokens the draft has not seen
    (its own last proposal, which it sampled but never fed, and the target's bonus token).
    Within a round the draft feeds its own samples with :meth:`CachedLM.advance`, so they
    never leave the device. Greedy proposals are deterministic, so their distributions are
    one-hot and ``propose`` returns ``None`` for them, as a model-free drafter does.
    """

    def __init__(self, model: torch.nn.Module, name: str = "model", cache: str = "preallocated"):
        self.lm = CachedLM(model, cache=cache)
        self.name = name

    def reset(self) -> None:
        self.lm.reset()

    def propose(self, seq, k, params, generator=None):
        if k == 0:
            return torch.empty(0, dtype=torch.long), None
        logits = self.lm.logits(seq, n_last=1)[0]
        tokens, probs = [], []
        for i in range(k):
            if params.greedy:
                token = logits.argmax(-1)
            else:
                q = probs_from_logits(logits, params)
                token = sample(q, generator)
                probs.append(q)
            tokens.append(token)
            if i + 1 < k:
                logits = self.lm.advance(token.view(1))[0]
        return torch.stack(tokens), (torch.stack(probs) if probs else None)

    @torch.inference_mode()
    def propose_tree(self, seq, params, generator=None, shape=None, depth: int = 4, top_k: int = 4,
                     n_nodes: int = 16):
        """A token tree and its draft distributions (:func:`specdec.trees.grow_tree`). Each level
        re-scores the tree grown so far in one tree pass of the draft
        (:meth:`specdec.cache.CachedLM.tree_logits`); afterwards the draft's cache holds the
        text only."""
        seq = list(seq) if not isinstance(seq, list) else seq
        root = self.lm.logits(seq, n_last=1)[0]

        def expand(nodes, tokens, parents, depths):
            rows = self.lm.tree_logits(seq, TokenTree(tuple(tokens), tuple(parents)))
            return rows[[n + 1 for n in nodes]]

        try:
            return grow_tree(root, expand, params, generator, shape, depth, top_k, n_nodes)
        finally:
            self.lm.crop(min(self.lm.length, len(seq)))  # the tree's nodes are not text


class NGramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the text's last n tokens and
    propose what followed it (Saxena, 2023). Costs no model call; proposes nothing when
    there is no match, and the round is then an ordinary decoding step. The longest n-gram
    (up to ``max_ngram``) that occurs is used; ``prefer="earliest"`` takes its first occurrence
    instead of its latest (vLLM's n-gram proposer does)."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, name: str = "ngram", prefer: str = "latest"):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if prefer not in ("latest", "earliest"):
            raise ValueError(f"prefer must be 'latest' or 'earliest', got {prefer!r}")
        self.max_ngram, self.min_ngram, self.name, self.prefer = max_ngram, min_ngram, name, prefer

    def reset(self) -> None:
        pass

    def propose(self, seq, k, params=None, generator=None):
        seq = torch.as_tensor(seq).cpu()
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            windows = seq.unfold(0, n, 1)[:-1]  # every earlier n-gram (the last one is the pattern)
            hits = (windows == seq[-n:]).all(-1).nonzero()
            if len(hits):
                start = int(hits[-1 if self.prefer == "latest" else 0]) + n
                return seq[start : start + k].clone(), None
        return torch.empty(0, dtype=torch.long), None

    def propose_tree(self, seq, params=None, generator=None, depth: int = 4, top_k: int = 4, n_nodes: int = 16,
                     shape=None):
        """Up to ``top_k`` different continuations, from the latest matches of the longest
        n-grams first, merged into a tree of at most ``n_nodes`` nodes and ``depth`` levels
        (``shape`` is ignored: the matches decide the shape). Deterministic: the distributions
        are ``None`` (each branch a one-point proposal, :func:`specdec.trees.verify_tree`)."""
        seq = torch.as_tensor(seq).cpu()
        continuations: list[list[int]] = []
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            windows = seq.unfold(0, n, 1)[:-1]
            hits = (windows == seq[-n:]).all(-1).nonzero().flatten().tolist()
            for start in reversed(hits):
                cont = seq[start + n: start + n + depth].tolist()
                if cont and cont not in continuations:
                    continuations.append(cont)
                if len(continuations) == top_k:
                    break
            if len(continuations) == top_k:
                break
        tokens, parents, where = [], [], {}
        for cont in continuations:
            parent = -1
            for t in cont:
                key = (parent, t)
                if key not in where:
                    if len(tokens) == n_nodes:
                        break
                    where[key] = len(tokens)
                    tokens.append(t)
                    parents.append(parent)
                parent = where[key]
        return TokenTree(tuple(tokens), tuple(parents)), None
