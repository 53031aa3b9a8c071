"""A causal language model together with its KV cache (chapter 2).

:class:`CachedLM` keeps one invariant that makes speculative decoding simple: the cache
always holds the keys and values of a *prefix* of the text, and remembers which tokens
that prefix is. Asked for logits of a sequence, it reuses the longest cached prefix,
rolls the cache back past anything that no longer matches (a rejected draft), and feeds
only the tokens it has not seen. Rollback after a rejection and the draft model's
off-by-one after a fully accepted round are then the same operation: "catch up to this
sequence".

Two kinds of cache sit under that rule, both speaking the transformers Cache API:

* ``"dynamic"`` -- :class:`transformers.DynamicCache`, which grows each layer's keys and
  values with ``torch.cat``: every step copies the whole cache. In transformers 5
  ``DynamicCache.crop`` takes the (negative) number of tokens to *remove*, which
  :meth:`CachedLM.crop` hides behind "keep the first n".
* ``"preallocated"`` (the default) -- :class:`PreallocatedCache`: each layer owns a buffer
  with room for many tokens, a step writes the new keys and values in place, and a
  rollback only moves the cursor that says how many positions are valid. Attention reads
  the valid positions only.

The tokens the cache holds are kept on the host (a Python list), so checking the common
prefix costs no device synchronisation; :meth:`CachedLM.advance` feeds tokens that still
live on the device (a drafter's own samples) and reads their ids back only when needed.

A drafter that reads the target's hidden states (chapter 10's head) asks for them with
``feature_layers``: every forward pass then also keeps those decoder layers' outputs for the
positions it fed, in a buffer aligned with the cache and rolled back with it
(:meth:`CachedLM.features`). The verify pass that scores a draft thereby also yields the
features of the positions it accepts, with no second pass.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .tokentree import tree_mask, tree_positions

__all__ = ["CACHE_KINDS", "CachedLM", "PreallocatedCache", "PreallocatedLayer", "cache_bytes", "decoder_layers"]

CACHE_KINDS = ("preallocated", "dynamic")


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in a buffer that grows by doubling, never per token.

    ``keys`` and ``values`` are views of the first ``length`` positions of the buffers, so
    everything that reads a :class:`~transformers.cache_utils.DynamicLayer` (its sequence
    length, the attention mask's size, :func:`cache_bytes`) reads this layer the same way.
    """

    def __init__(self, capacity: int = 256):
        super().__init__()
        self.capacity = max(1, int(capacity))
        self.length = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._k = key_states.new_empty(self._shape(key_states, self.capacity))
        self._v = value_states.new_empty(self._shape(value_states, self.capacity))
        self.keys, self.values = self._k[..., :0, :], self._v[..., :0, :]
        self.is_initialized = True

    @staticmethod
    def _shape(states: torch.Tensor, n: int) -> tuple[int, ...]:
        return (*states.shape[:-2], n, states.shape[-1])

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._k.shape[-2])
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_empty(self._shape(old, capacity))
            new[..., : self.length, :] = old[..., : self.length, :]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._grow(end)
        self._k[..., self.length : end, :] = key_states
        self._v[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self.keys, self.values = self._k[..., :0, :], self._v[..., :0, :]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` positions (the transformers 5 convention)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes the negative number of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self.keys, self.values = self._k[..., : self.length, :], self._v[..., : self.length, :]


class PreallocatedCache(DynamicCache):
    """A transformers cache of :class:`PreallocatedLayer` s, one per model layer."""

    def __init__(self, capacity: int = 256):
        # Cache.__init__ directly: DynamicCache's own would pick its layers from a config.
        super(DynamicCache, self).__init__(layer_class_to_replicate=lambda: PreallocatedLayer(capacity))


class CachedLM:
    """A model plus a KV cache holding a known prefix of tokens.

    ``cache`` is ``"preallocated"`` (:class:`PreallocatedCache`, the default) or
    ``"dynamic"`` (:class:`transformers.DynamicCache`); ``capacity`` is how many tokens the
    preallocated buffers hold before they first grow. ``feature_layers``: indices of decoder
    layers (ascending) whose outputs to keep for every cached position (:meth:`features`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        max_length: int | None = None,
        cache: str = "preallocated",
        capacity: int = 256,
        feature_layers: tuple[int, ...] = (),
    ):
        if cache not in CACHE_KINDS:
            raise ValueError(f"cache must be one of {CACHE_KINDS}, got {cache!r}")
        self.feature_layers = tuple(feature_layers)
        if self.feature_layers:
            n = len(decoder_layers(model))
            if list(self.feature_layers) != sorted(set(self.feature_layers)) or not all(
                    isinstance(i, int) and 0 <= i < n for i in self.feature_layers):
                raise ValueError(f"feature_layers must be distinct ascending layer indices in [0, {n}), "
                                 f"got {feature_layers!r}")
        self.model = model
        self.kind = cache
        self.capacity = capacity
        self.max_length = max_length if max_length is not None else _context_length(model)
        self.device = next(model.parameters()).device
        self.reset()

    @property
    def length(self) -> int:
        """How many tokens the cache holds (equals ``cache.get_seq_length()``)."""
        return len(self._tokens) + self._n_pending

    @property
    def tokens(self) -> list[int]:
        """The token ids the cache holds, in order."""
        self._resolve()
        return self._tokens

    def reset(self) -> None:
        self.cache = PreallocatedCache(self.capacity) if self.kind == "preallocated" else DynamicCache()
        self._tokens: list[int] = []
        self._pending: list[torch.Tensor] = []  # fed tokens whose ids are still on the device
        self._n_pending = 0
        self._features: torch.Tensor | None = None  # (room, len(feature_layers) * hidden)

    def _resolve(self) -> None:
        if self._pending:
            self._tokens += torch.cat(self._pending).tolist()
            self._pending, self._n_pending = [], 0

    def crop(self, n_keep: int) -> None:
        """Roll the cache back so that it holds only the first ``n_keep`` tokens."""
        if not 0 <= n_keep <= self.length:
            raise ValueError(f"cannot keep {n_keep} tokens of a cache holding {self.length}")
        if n_keep < self.length:
            self._resolve()
            self.cache.crop(n_keep - self.length)  # transformers 5: a negative count to remove
            del self._tokens[n_keep:]

    def common_prefix(self, seq) -> int:
        """Length of the longest common prefix of the cached tokens and ``seq``."""
        return shared_prefix(self.tokens, _as_list(seq))

    def features(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The kept layers' outputs ``(end - start, len(feature_layers) * hidden)`` for cached
        positions ``start .. end - 1``, the layers side by side in ``feature_layers`` order."""
        end = self.length if end is None else end
        if not self.feature_layers:
            raise ValueError("this CachedLM keeps no features: build it with feature_layers")
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"positions {start}..{end} are not all cached (the cache holds {self.length})")
        if self._features is None:
            return torch.empty(0, 0, device=self.device)
        return self._features[start:end]

    def _forward(self, new: torch.Tensor, n_last: int, **extra) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hooks = [decoder_layers(self.model)[i].register_forward_hook(
            lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
            for i in self.feature_layers]
        start = self.length
        try:
            out = self.model(
                input_ids=new.view(1, -1),
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=n_last,  # skip the LM head where no prediction is needed
                **extra,
            )
        finally:
            for h in hooks:
                h.remove()
        if captured:
            self._keep_features(start, torch.cat(captured, -1)[0])
        return out.logits[0, -n_last:]

    def _keep_features(self, start: int, feats: torch.Tensor) -> None:
        end = start + len(feats)
        if self._features is None or end > len(self._features):
            room = max(end, self.capacity, 2 * (0 if self._features is None else len(self._features)))
            grown = feats.new_empty(room, feats.shape[-1])
            if self._features is not None:
                grown[:start] = self._features[:start]
            self._features = grown
        self._features[start:end] = feats

    @torch.inference_mode()
    def logits(self, seq, n_last: int = 1, suffix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(n_last, V)`` predicting the token after each of the last ``n_last`` positions.

        ``seq`` is the whole token sequence so far (a 1-D tensor or a list of ids), optionally
        followed by ``suffix``, tokens that may still be on the device (a round's draft). Row
        ``i`` is the model's prediction for position ``len(seq) + len(suffix) - n_last + i + 1``.
        Afterwards the cache holds all of ``seq`` and ``suffix``.
        """
        seq = _as_list(seq)
        suffix = torch.empty(0, dtype=torch.long) if suffix is None else suffix.reshape(-1)
        total = len(seq) + len(suffix)
        if not 1 <= n_last <= total:
            raise ValueError(f"need a 1-D sequence of at least n_last={n_last} tokens, got {total}")
        if self.max_length and total > self.max_length:
            raise ValueError(
                f"sequence of {total} tokens exceeds the model's context of {self.max_length} tokens; "
                "shorten the prompt or lower max_new_tokens"
            )
        keep = min(self.common_prefix(seq), total - n_last)
        self.crop(keep)
        new = torch.tensor(seq[keep:], dtype=torch.long, device=self.device)
        if len(suffix):
            new = torch.cat([new, suffix.to(self.device)])
        logits = self._forward(new, n_last)
        self._tokens += seq[keep:]
        if len(suffix):
            self._pending.append(suffix)
            self._n_pending += len(suffix)
        return logits

    @torch.inference_mode()
    def tree_logits(self, seq, tree) -> torch.Tensor:
        """Score a token tree (:class:`specdec.trees.TokenTree`) after ``seq`` in one pass.

        The text's tokens not yet cached are fed first (causally), then every node, each
        attending to the text and to its own ancestors only (:func:`specdec.trees.tree_mask`), at
        the position of its depth. Returns logits ``(len(tree) + 1, V)``: row 0 predicts the
        token after ``seq``, row ``i + 1`` the token after node ``i``. The cache then holds
        ``seq`` and the nodes in node order; :meth:`keep_path` keeps one path of them.
        """
        seq = _as_list(seq)
        n = len(tree)
        if not seq:
            raise ValueError("a tree needs a non-empty text before it")
        if self.max_length and len(seq) + n > self.max_length:
            raise ValueError(f"{len(seq) + n} tokens exceed the model's context of {self.max_length}")
        keep = min(self.common_prefix(seq), len(seq) - 1)
        self.crop(keep)
        tail = seq[keep:]
        dtype = next(self.model.parameters()).dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        ids = torch.tensor(tail + list(tree.tokens), dtype=torch.long, device=self.device)
        logits = self._forward(ids, n + 1, attention_mask=tree_mask(tree, keep, len(tail), dtype, self.device),
                               position_ids=tree_positions(tree, keep, len(tail), self.device))
        self._tokens += tail + list(tree.tokens)
        return logits

    @torch.inference_mode()
    def keep_path(self, n_text: int, nodes: list[int]) -> None:
        """After :meth:`tree_logits`: keep the first ``n_text`` positions and then the tree
        nodes ``nodes`` (a path, root side first), moved to follow the text; drop every other
        node. Keys, values, kept features and the token list move together."""
        self._resolve()
        src = [n_text + i for i in nodes]
        if not 0 <= n_text <= self.length or any(not n_text <= s < self.length for s in src):
            raise ValueError(f"positions {src} after {n_text} are not all in a cache of {self.length}")
        if src == list(range(n_text, n_text + len(src))):  # already in place: a rollback is enough
            self.crop(n_text + len(src))
            return
        index = torch.tensor(src, dtype=torch.long, device=self.device)
        end = n_text + len(src)
        for layer in self.cache.layers:
            if isinstance(layer, PreallocatedLayer):
                layer._k[..., n_text:end, :] = layer._k[..., index, :]
                layer._v[..., n_text:end, :] = layer._v[..., index, :]
                layer.length = end
                layer.keys, layer.values = layer._k[..., :end, :], layer._v[..., :end, :]
            else:
                layer.keys = torch.cat([layer.keys[..., :n_text, :], layer.keys[..., index, :]], dim=-2)
                layer.values = torch.cat([layer.values[..., :n_text, :], layer.values[..., index, :]], dim=-2)
        if self._features is not None:
            self._features[n_text:end] = self._features[index]
        self._tokens = self._tokens[:n_text] + [self._tokens[s] for s in src]

    @torch.inference_mode()
    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` after everything cached; logits ``(len(tokens), V)`` for each of them.

        For a drafter feeding its own samples: the ids may stay on the device, and are read
        back only when the cached tokens are next compared (one synchronisation, not one
        per token).
        """
        tokens = tokens.reshape(-1)
        if self.max_length and self.length + len(tokens) > self.max_length:
            raise ValueError(f"{self.length + len(tokens)} tokens exceed the model's context of {self.max_length}")
        logits = self._forward(tokens.to(self.device), len(tokens))
        self._pending.append(tokens)
        self._n_pending += len(tokens)
        return logits


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def _as_list(seq) -> list[int]:
    if isinstance(seq, list):
        return seq
    seq = torch.as_tensor(seq)
    if seq.ndim != 1:
        raise ValueError(f"need a 1-D sequence of token ids, got shape {tuple(seq.shape)}")
    return seq.tolist()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a transformers causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no model.layers: features need a decoder-only transformers LM")
    return layers


def cache_bytes(cache) -> int:
    """Bytes held by the keys and values of every layer of a cache (the valid positions)."""
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
