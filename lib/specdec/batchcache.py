"""One KV cache for a batch of texts of different lengths (chapter 12).

:class:`specdec.cache.CachedLM` holds one text. Speculating for a batch of prompts means
holding several texts that grow and roll back by *different* amounts each round: one row
accepts four drafted tokens while its neighbour accepts none. :class:`BatchedLM` keeps the
same rule as ``CachedLM`` row by row -- asked for logits of a sequence, each row reuses its
longest cached prefix, rolls back past what no longer matches, and feeds only what it has not
seen -- over one cache whose rows share their columns:

* every forward pass writes one block of ``T`` new columns for all rows. A row that feeds
  fewer than ``T`` tokens is padded on the *left* of the block, so that every row's newest
  tokens sit in the block's last columns and the LM head runs on those only;
* a rollback does not move anything: the row's rejected columns are only marked invalid, and
  the attention mask (built per pass from the validity of every column, row by row) hides them
  from every later query. Each row's position ids count its own valid tokens, so a token's
  rotary position is what it would be in a cache of that row alone;
* columns that no row holds any more at the end of the cache are forgotten
  (:meth:`BatchedLM.trim`), so a round whose rows all reject their last drafts does not widen it;
* a row that is finished leaves the batch (:meth:`BatchedLM.keep_rows`), so that the passes
  that follow compute only the rows still generating.

Rejected and padded columns stay in the buffers as holes: the cache's width grows by ``T`` per
pass whatever was accepted. :meth:`BatchedLM.compact` squeezes the holes out (one gather of
every layer's keys and values) when they outnumber the valid columns.
"""

from __future__ import annotations

import torch

from .cache import PreallocatedCache, _context_length, shared_prefix

__all__ = ["BatchedLM", "batch_mask"]


def batch_mask(valid: torch.Tensor, n_new: int, dtype=torch.float32) -> torch.Tensor:
    """The additive attention mask ``(B, 1, n_new, W)`` of a pass whose queries are the last
    ``n_new`` of ``W`` columns: query ``i`` of row ``b`` sees every column up to its own that
    ``valid[b]`` marks, and always itself (a padded query then attends to something, and its
    output -- never read -- stays finite). 0 where attention is allowed, the dtype's most
    negative number elsewhere."""
    b, w = valid.shape
    start = w - n_new
    cols = torch.arange(w, device=valid.device)
    causal = cols.view(1, w) <= (start + torch.arange(n_new, device=valid.device)).view(n_new, 1)
    allowed = valid.view(b, 1, w) & causal.view(1, n_new, w)
    allowed[:, torch.arange(n_new), start + torch.arange(n_new)] = True
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.view(b, 1, n_new, w)


class BatchedLM:
    """A causal LM with one KV cache holding ``batch`` texts, each a known list of tokens.

    ``capacity`` is how many columns the buffers hold before they first grow (by doubling).
    """

    def __init__(self, model: torch.nn.Module, batch: int, capacity: int = 256, pad_id: int = 0):
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        self.model = model
        self.capacity = max(1, int(capacity))
        self.pad_id = int(pad_id)
        self.max_length = _context_length(model)
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.mask_dtype = dtype if dtype.is_floating_point else torch.float32
        self.cache = PreallocatedCache(self.capacity)
        self.width = 0  # columns written so far, valid or not
        self.valid = torch.zeros(batch, self.capacity, dtype=torch.bool)
        self.rows: list[list[int]] = [[] for _ in range(batch)]  # each row's cached tokens
        self.where: list[list[int]] = [[] for _ in range(batch)]  # the column of each of them

    @property
    def batch(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.rows]

    @property
    def holes(self) -> int:
        """Columns written but holding no row's token, summed over rows."""
        return self.batch * self.width - sum(self.lengths)

    @torch.inference_mode()
    def crop(self, row: int, n_keep: int) -> None:
        """Roll row ``row`` back to its first ``n_keep`` tokens (its later columns become holes)."""
        if not 0 <= n_keep <= len(self.rows[row]):
            raise ValueError(f"cannot keep {n_keep} tokens of a row holding {len(self.rows[row])}")
        gone = self.where[row][n_keep:]
        if gone:
            self.valid[row, gone] = False
            del self.rows[row][n_keep:], self.where[row][n_keep:]

    @torch.inference_mode()
    def logits(self, seqs: list[list[int]], n_last) -> list[torch.Tensor]:
        """For each row ``b``, logits ``(n_last[b], V)`` predicting the token after each of the
        last ``n_last[b]`` tokens of ``seqs[b]`` (its whole text so far). ``n_last`` is an int
        (every row) or a list. Afterwards row ``b`` holds all of ``seqs[b]``."""
        if len(seqs) != self.batch:
            raise ValueError(f"need {self.batch} sequences (one per row), got {len(seqs)}")
        n_last = [n_last] * self.batch if isinstance(n_last, int) else list(n_last)
        new = []
        for b, (seq, n) in enumerate(zip(seqs, n_last)):
            seq = list(seq)
            if not 1 <= n <= len(seq):
                raise ValueError(f"row {b}: need at least n_last={n} tokens, got {len(seq)}")
            if self.max_length and len(seq) > self.max_length:
                raise ValueError(f"row {b}: {len(seq)} tokens exceed the model's context of {self.max_length}")
            self.crop(b, min(shared_prefix(self.rows[b], seq), len(seq) - n))
            new.append(seq[len(self.rows[b]):])
        t = max(len(x) for x in new)
        ids = torch.full((self.batch, t), self.pad_id, dtype=torch.long)
        pos = torch.zeros(self.batch, t, dtype=torch.long)
        self._reserve(self.width + t)
        for b, x in enumerate(new):
            pad = t - len(x)  # padding on the left: each row's newest tokens end the block
            ids[b, pad:] = torch.tensor(x, dtype=torch.long)
            pos[b] = torch.arange(t) - pad + len(self.rows[b])
            self.valid[b, self.width + pad: self.width + t] = True
        pos.clamp_(min=0)
        end = self.width + t
        mask = batch_mask(self.valid[:, :end], t, self.mask_dtype).to(self.device)
        out = self.model(input_ids=ids.to(self.device), past_key_values=self.cache, use_cache=True,
                         attention_mask=mask, position_ids=pos.to(self.device), logits_to_keep=max(n_last))
        for b, x in enumerate(new):
            self.where[b] += range(end - len(x), end)
            self.rows[b] += x
        self.width = end
        return [out.logits[b, out.logits.shape[1] - n:] for b, n in enumerate(n_last)]

    @torch.inference_mode()
    def trim(self) -> None:
        """Forget the trailing columns no row holds a token in (after every row rolled back past
        them): the next pass writes there again, and attention reads fewer columns."""
        width = max((w[-1] + 1 for w in self.where if w), default=0)
        if width < self.width:
            self.valid[:, width:] = False
            for layer in self._layers():
                layer.crop(width - layer.length)
            self.width = width

    def _reserve(self, width: int) -> None:
        if width > self.valid.shape[1]:
            grown = torch.zeros(self.batch, max(width, 2 * self.valid.shape[1]), dtype=torch.bool)
            grown[:, : self.valid.shape[1]] = self.valid
            self.valid = grown

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "is_initialized", False)]

    @torch.inference_mode()
    def keep_rows(self, rows: list[int]) -> None:
        """Keep only the rows ``rows`` (in that order): the others leave the batch."""
        if not rows or any(not 0 <= r < self.batch for r in rows) or len(set(rows)) != len(rows):
            raise ValueError(f"rows must be distinct indices in [0, {self.batch}), got {rows}")
        if rows == list(range(self.batch)):
            return
        index = torch.tensor(rows, dtype=torch.long)
        for layer in self._layers():
            layer._k = layer._k[index.to(layer._k.device)]
            layer._v = layer._v[index.to(layer._v.device)]
            layer.keys, layer.values = layer._k[..., : layer.length, :], layer._v[..., : layer.length, :]
        self.valid = self.valid[index]
        self.rows = [self.rows[r] for r in rows]
        self.where = [self.where[r] for r in rows]

    @torch.inference_mode()
    def compact(self) -> None:
        """Squeeze the holes out: each row's valid columns move to the right end of a block as
        wide as the longest row (shorter rows padded on the left, as after a prefill)."""
        width = max(self.lengths)
        index = torch.zeros(self.batch, width, dtype=torch.long)
        valid = torch.zeros(self.batch, max(width, self.capacity), dtype=torch.bool)
        for b, cols in enumerate(self.where):
            pad = width - len(cols)
            index[b, pad:] = torch.tensor(cols, dtype=torch.long)
            valid[b, pad:width] = True
            self.where[b] = list(range(pad, width))
        for layer in self._layers():
            layer.length = width
            for name in ("_k", "_v"):
                buf = getattr(layer, name)  # (B, heads, columns, head_dim)
                gather = index.to(buf.device).view(self.batch, 1, width, 1).expand(-1, buf.shape[1], -1, buf.shape[-1])
                buf[..., :width, :] = torch.gather(buf, 2, gather)
            layer.keys, layer.values = layer._k[..., :width, :], layer._v[..., :width, :]
        self.valid, self.width = valid, width

