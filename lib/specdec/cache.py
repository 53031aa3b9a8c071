"""A causal language model together with its KV cache (chapter 2).

:class:`CachedLM` keeps one invariant that makes speculative decoding simple: the cache
always holds the keys and values of a *prefix* of the text, and remembers which tokens
that prefix is. Asked for logits of a sequence, it reuses the longest cached prefix,
rolls the cache back past anything that no longer matches (a rejected draft), and feeds
only the tokens it has not seen. Rollback after a rejection and the draft model's
off-by-one after a fully accepted round are then the same operation: "catch up to this
sequence".

The cache itself is the transformers Cache API (:class:`transformers.DynamicCache`); note
that in transformers 5 ``DynamicCache.crop`` takes the (negative) number of tokens to
*remove*, which :meth:`CachedLM.crop` hides behind "keep the first n".
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

__all__ = ["CachedLM", "cache_bytes"]


class CachedLM:
    """A model plus a :class:`~transformers.DynamicCache` holding a known prefix of tokens."""

    def __init__(self, model: torch.nn.Module, max_length: int | None = None):
        self.model = model
        self.max_length = max_length if max_length is not None else _context_length(model)
        self.reset()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def length(self) -> int:
        """How many tokens the cache holds (equals ``cache.get_seq_length()``)."""
        return len(self.tokens)

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.tokens = torch.empty(0, dtype=torch.long)

    def crop(self, n_keep: int) -> None:
        """Roll the cache back so that it holds only the first ``n_keep`` tokens."""
        if not 0 <= n_keep <= self.length:
            raise ValueError(f"cannot keep {n_keep} tokens of a cache holding {self.length}")
        if n_keep < self.length:
            self.cache.crop(n_keep - self.length)  # transformers 5: a negative count to remove
            self.tokens = self.tokens[:n_keep]

    def common_prefix(self, seq: torch.Tensor) -> int:
        """Length of the longest common prefix of the cached tokens and ``seq``."""
        n = min(self.length, len(seq))
        mismatch = (self.tokens[:n] != seq[:n].cpu()).nonzero()
        return int(mismatch[0]) if len(mismatch) else n

    @torch.inference_mode()
    def logits(self, seq: torch.Tensor, n_last: int = 1) -> torch.Tensor:
        """Logits ``(n_last, V)`` predicting the token after each of the last ``n_last`` positions.

        ``seq`` is the whole 1-D token sequence so far. Row ``i`` is the model's prediction
        for position ``len(seq) - n_last + i + 1``. Afterwards the cache holds all of ``seq``.
        """
        seq = torch.as_tensor(seq, dtype=torch.long).cpu()
        if seq.ndim != 1 or not 1 <= n_last <= len(seq):
            raise ValueError(f"need a 1-D sequence of at least n_last={n_last} tokens, got shape {tuple(seq.shape)}")
        if self.max_length and len(seq) > self.max_length:
            raise ValueError(
                f"sequence of {len(seq)} tokens exceeds the model's context of {self.max_length} tokens; "
                "shorten the prompt or lower max_new_tokens"
            )
        keep = min(self.common_prefix(seq), len(seq) - n_last)
        self.crop(keep)
        new = seq[keep:]
        out = self.model(
            input_ids=new[None].to(self.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=n_last,  # skip the LM head where no prediction is needed
        )
        self.tokens = seq.clone()
        return out.logits[0, -n_last:]


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by the keys and values of every layer of a cache."""
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _context_length(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
