"""How long a forward pass of the target takes on this machine: the one forward timer.

Every cost the book measures in target decode steps comes from here: a pass scoring ``n`` new
tokens on top of a KV cache of a fixed length, through the loops' own cache
(:class:`specdec.cache.CachedLM`), all sizes and models timed interleaved.

* :func:`time_forwards` -- seconds per pass, ``{model: {n: [seconds]}}``;
* :func:`verify_costs` -- v(n), the cost of scoring ``n`` tokens in decode steps
  (:func:`specdec.metrics.verify_cost` of those timings);
* :func:`measure_forward_ms`, :func:`verify_cost_curve` -- one model's pass, or its curve;
* :func:`batch_verify_costs` -- for a batch of ``B`` texts (:class:`specdec.batchcache.BatchedLM`),
  the cost of scoring ``n`` tokens per row in decode steps *of that batch*: what a round of
  batched speculation costs against a batched autoregressive step.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from .batchcache import BatchedLM
from .cache import CachedLM
from .checks import require_int
from .metrics import verify_cost
from .profiling import time_interleaved

__all__ = ["CostCurve", "time_forwards", "verify_costs", "measure_forward_ms", "verify_cost_curve",
           "time_batch_forwards", "batch_verify_costs"]


@dataclass(frozen=True)
class CostCurve:
    """Measured time of one forward pass scoring ``k`` tokens, for each ``k``."""

    ks: tuple[int, ...]
    ms: tuple[float, ...]  # median milliseconds per pass
    context: int

    @property
    def relative(self) -> tuple[float, ...]:
        """Cost of scoring ``k`` tokens at once relative to scoring one."""
        base = self.ms[self.ks.index(1)]
        return tuple(m / base for m in self.ms)


def time_forwards(models, ns, context: int, repeats: int = 5, warmup: int = 1, seed: int = 0,
                  desc: str = "forward passes") -> dict[str, dict[int, list[float]]]:
    """Seconds of a forward pass scoring ``n`` new tokens on top of a KV cache of exactly
    ``context`` tokens, for each model in ``models`` (a mapping ``{name: model}``, or one model,
    named ``"model"``) and each ``n`` in ``ns``: ``{name: {n: [seconds per repeat]}}``.

    Each model reads through its own :class:`specdec.cache.CachedLM` (the loops' cache), rolled
    back to ``context`` before every pass. All (model, n) combinations are timed interleaved
    (:func:`specdec.profiling.time_interleaved`), so slow drifts of the machine affect each alike.
    """
    if not isinstance(models, dict):
        models = {"model": models}
    ns = [require_int("number of tokens", n, 1) for n in ns]
    repeats = require_int("repeats", repeats, 1)
    require_int("context", context, 0)
    require_int("warmup", warmup, 0)
    fns, device = {}, None
    g = torch.Generator().manual_seed(seed)
    for name, model in models.items():
        if not hasattr(model, "config") or not callable(model):
            raise TypeError(f"expected a transformers causal LM, got {type(model).__name__}")
        device = next(model.parameters()).device
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if limit is not None and context + max(ns) > limit:
            raise ValueError(f"context + tokens = {context + max(ns)} exceeds the model's {limit} positions")
        ids = torch.randint(model.config.vocab_size, (context + max(ns),), generator=g).tolist()
        lm = CachedLM(model, capacity=context + max(ns))
        if context:
            lm.logits(ids[:context])
        for n in ns:
            def one_pass(lm=lm, ids=ids, n=n):
                lm.crop(min(lm.length, context))
                lm.logits(ids[: context + n], n_last=n)

            fns[(name, n)] = one_pass
    labels = {f"{name}, n={n}": (name, n) for name, n in fns}
    times = time_interleaved({label: fns[key] for label, key in labels.items()}, repeats, warmup, device,
                             progress=True, desc=desc)
    out: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    for label, (name, n) in labels.items():
        out[name][n] = times[label]
    return out


def measure_forward_ms(model, n_tokens: int = 1, context: int = 128, repeats: int = 5, warmup: int = 1,
                       seed: int = 0) -> float:
    """Median milliseconds of one forward pass of ``model`` that scores ``n_tokens`` new tokens on
    top of a KV cache holding ``context`` tokens (the cache is cropped back to ``context`` before
    every repeat). ``n_tokens=1`` is one decode step."""
    seconds = time_forwards(model, [n_tokens], context, repeats, warmup, seed, "forward")["model"][n_tokens]
    return statistics.median(seconds) * 1e3


def verify_cost_curve(model, ks=(1, 2, 4, 8, 16), context: int = 128, repeats: int = 5, warmup: int = 1,
                      seed: int = 0) -> CostCurve:
    """Measured cost of scoring ``k`` tokens in one forward pass, for each ``k`` in ``ks`` (``k=1``
    is added as the baseline if missing). ``.relative`` gives the cost relative to ``k=1``."""
    ks = sorted({require_int("k", k, 1) for k in ks} | {1})
    seconds = time_forwards(model, ks, context, repeats, warmup, seed, "verify cost")["model"]
    return CostCurve(ks=tuple(ks), ms=tuple(statistics.median(seconds[k]) * 1e3 for k in ks), context=int(context))


def verify_costs(model, ns=(1, 2, 3, 5, 9, 17, 33), context: int = 256, repeats: int = 5, warmup: int = 2) -> dict[int, float]:
    """v(n): the measured cost of scoring ``n`` tokens in one pass, in decode steps (medians of
    interleaved timings, :func:`specdec.metrics.verify_cost`); ``n = 1`` is always timed."""
    ns = sorted(set(ns) | {1})
    return verify_cost(time_forwards({"m": model}, ns, context, repeats=repeats, warmup=warmup, desc="verify cost")["m"])


def time_batch_forwards(model, shapes, context: int, repeats: int = 5, warmup: int = 1, seed: int = 0,
                        desc: str = "batched passes") -> dict[tuple[int, int], list[float]]:
    """Seconds of one pass of a batch of ``B`` texts, each scoring ``n`` new tokens on top of
    ``context`` cached ones, for each ``(B, n)`` of ``shapes``: ``{(B, n): [seconds per repeat]}``.
    Each batch size has its own :class:`specdec.batchcache.BatchedLM`, rolled back to ``context``
    before every pass; every shape is timed interleaved."""
    shapes = [(require_int("batch size", b, 1), require_int("number of tokens", n, 1)) for b, n in shapes]
    repeats = require_int("repeats", repeats, 1)
    require_int("context", context, 1)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and context + max(n for _, n in shapes) > limit:
        raise ValueError(f"context + tokens exceeds the model's {limit} positions")
    g = torch.Generator().manual_seed(seed)
    n_max = max(n for _, n in shapes)
    lms, texts = {}, {}
    for b in sorted({b for b, _ in shapes}):
        texts[b] = torch.randint(model.config.vocab_size, (b, context + n_max), generator=g).tolist()
        lms[b] = BatchedLM(model, b, capacity=context + n_max)
        lms[b].logits([t[:context] for t in texts[b]], 1)
    fns = {}
    for b, n in shapes:
        def one_pass(lm=lms[b], rows=texts[b], n=n):
            for r in range(lm.batch):
                lm.crop(r, context)
            lm.trim()
            lm.logits([t[: context + n] for t in rows], n)

        fns[f"B={b}, n={n}"] = one_pass
    device = next(model.parameters()).device
    times = time_interleaved(fns, repeats, warmup, device, progress=True, desc=desc)
    return {(b, n): times[f"B={b}, n={n}"] for b, n in shapes}


def batch_verify_costs(model, batch_sizes=(1, 2, 4, 8, 16), ns=(1, 5), context: int = 128, repeats: int = 5,
                       warmup: int = 1) -> dict:
    """For each batch size ``B``: ``ms`` the median milliseconds of a pass scoring ``n`` tokens per
    row, and ``v`` that pass over the batch's own decode step (``n = 1``) -- v(n) of the batch.
    A round of batched speculation with ``K`` drafts costs ``v[B][K + 1]`` batched decode steps."""
    ns = sorted({require_int("n", n, 1) for n in ns} | {1})
    times = time_batch_forwards(model, [(b, n) for b in batch_sizes for n in ns], context, repeats, warmup)
    out = {}
    for b in batch_sizes:
        ms = {n: statistics.median(times[(b, n)]) * 1e3 for n in ns}
        out[b] = {"ms": ms, "v": {n: ms[n] / ms[1] for n in ns}}
    return out
