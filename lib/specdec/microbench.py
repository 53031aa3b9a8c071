"""The two peaks of the roofline, and the products of a pass, measured on this machine (chapter 1).

:mod:`specdec.roofline` counts what a decode step must compute and move; this module measures
what the machine does:

* :func:`measure_matmul_flops`, :func:`measure_bandwidth` -- the FLOP/s and bytes/s the roofline
  assumes;
* :func:`measure_linear_gflops` -- the model's own weight matrices (:func:`specdec.roofline.linear_shapes`)
  multiplied by ``m`` rows, the tokens one pass scores; :func:`pass_matmul_ms` adds them up into
  one pass and :func:`fit_affine_cost` summarises passes as a fixed part plus a price per token;
* :func:`measure_pass_breakdown` -- a model's whole pass beside its own products, in the same
  rounds, so that the rest of the pass (attention, norms, dispatch) is measured too.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import require_int
from .profiling import time_repeated
from .roofline import linear_shapes

__all__ = ["measure_matmul_flops", "measure_bandwidth", "measure_linear_gflops", "pass_matmul_ms", "fit_affine_cost",
           "measure_pass_breakdown"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, warmup: int, device: torch.device, summary: str = "median") -> float:
    _check_summary(summary)
    seconds = time_repeated(fn, repeats, warmup, device)
    return statistics.median(seconds) if summary == "median" else min(seconds)


def measure_matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 5, warmup: int = 2,
                         device: str | torch.device = "cpu", summary: str = "median") -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matrix multiply (``2 n^3`` FLOPs), median of
    ``repeats`` timings after ``warmup`` untimed runs (``summary="min"``: the fastest, the better
    estimate of a peak on a machine shared with other work). Uses torch's current thread count."""
    n = require_int("n", n, 1)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: torch.mm(a, b, out=out), repeats, warmup, device, summary)
    return 2.0 * n**3 / seconds


def measure_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5, warmup: int = 1, method: str = "copy",
                      device: str | torch.device = "cpu", summary: str = "median") -> float:
    """Measured memory bandwidth in bytes/s, median of ``repeats`` timings (``summary="min"``:
    the fastest, as in :func:`measure_matmul_flops`).

    ``method="copy"`` copies an ``nbytes`` buffer into another and counts ``2 * nbytes`` (read and
    write); ``method="sum"`` reduces it and counts ``nbytes`` (read only, like a decode step reading
    its weights). Choose ``nbytes`` well above the last-level cache so that the cache cannot serve it.
    """
    nbytes = require_int("nbytes", nbytes, 1)
    if method not in ("copy", "sum"):
        raise ValueError(f"method must be 'copy' or 'sum', got {method!r}")
    device = torch.device(device)
    n = nbytes // 4
    if n < 1:
        raise ValueError(f"nbytes must be at least 4, got {nbytes}")
    src = torch.ones(n, dtype=torch.float32, device=device)
    if method == "copy":
        dst = torch.empty_like(src)
        seconds = _median_seconds(lambda: dst.copy_(src), repeats, warmup, device, summary)
        return 2.0 * n * 4 / seconds
    seconds = _median_seconds(lambda: src.sum(), repeats, warmup, device, summary)
    return 1.0 * n * 4 / seconds


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def measure_linear_gflops(config, ms=(1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17, 24, 32),
                          dtypes=(torch.float32, torch.bfloat16), repeats: int = 5, warmup: int = 1,
                          copies: int | None = None, device: str | torch.device = "cpu",
                          seed: int = 0, progress: bool = False, summary: str = "median"):
    """Achieved FLOP/s of the matrix products a forward pass of ``config``'s model performs when it
    scores ``m`` tokens, for each ``m`` in ``ms``, each shape of :func:`linear_shapes` and each
    dtype: a tidy :class:`pandas.DataFrame` with one row per (dtype, shape, m).

    Each product is ``torch.nn.functional.linear(x, W)``, ``x`` of shape ``[m, in]``, as a
    ``torch.nn.Linear`` layer computes it. The weights are random (their values do not change the
    time). ``copies`` distinct weight matrices of each shape are multiplied in turn, one call
    each, and the time is divided by ``copies``: with ``copies=None`` as many as one pass has
    (``per_pass``), so the weights stream from memory as in the model; with a small number, a
    small matrix stays in the processor's cache between calls and the time is that of the kernel
    alone. Timing is :func:`specdec.profiling.time_interleaved`, rounds interleaved across ``m``
    (``repeats`` rounds after ``warmup``), summarised by ``summary``: ``"median"``, or ``"min"``,
    the fastest round, which on a machine shared with other work is the one least disturbed by
    it (interference only ever adds time).

    Columns: ``dtype``, ``matrices`` (the label of the shape), ``in_features``, ``out_features``,
    ``per_pass``, ``copies``, ``m``, ``flops`` and ``bytes`` of one product, ``intensity``
    (FLOP/byte), ``seconds`` (per product, by ``summary``), ``seconds_q1`` and ``seconds_q3``
    (quartiles of the rounds) and ``gflops`` (achieved, ``flops / seconds / 1e9``).
    :func:`pass_matmul_ms` sums them into the matmul time of one forward pass.
    """
    import pandas as pd

    from .profiling import summarize, time_interleaved

    ms = sorted({require_int("m", m, 1) for m in ms})
    if not ms:
        raise ValueError("ms must name at least one number of rows")
    _check_summary(summary)
    if copies is not None:
        copies = require_int("copies", copies, 1)
    dtypes = list(dtypes)
    for dt in dtypes:
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise ValueError(f"dtypes must be floating-point torch dtypes, got {dt!r}")
    device = torch.device(device)
    shapes = linear_shapes(config)
    g = torch.Generator().manual_seed(seed)
    rows = []
    jobs = [(dt, s) for dt in dtypes for s in shapes]
    for dt, s in tqdm(jobs, desc="matrix shapes", leave=False, disable=not progress):
        n_copies = s.per_pass if copies is None else min(copies, s.per_pass)
        weights = [torch.empty(s.out_features, s.in_features).uniform_(-0.05, 0.05, generator=g)
                   .to(device=device, dtype=dt) for _ in range(n_copies)]
        inputs = {m: torch.randn(m, s.in_features, generator=g).to(device=device, dtype=dt) for m in ms}

        def product(x):
            def run():
                for w in weights:
                    torch.nn.functional.linear(x, w)
            return run

        with torch.inference_mode():
            rounds = time_interleaved({m: product(inputs[m]) for m in ms}, repeats, warmup, device)
        elem = torch.empty((), dtype=dt).element_size()
        for m in ms:
            t = summarize([r / n_copies for r in rounds[m]])
            seconds = t.median if summary == "median" else t.min
            flops, nbytes = s.flops(m), s.bytes(m, elem)
            rows.append({"dtype": _DTYPE_NAMES.get(dt, str(dt).removeprefix("torch.")), "matrices": s.label,
                         "in_features": s.in_features, "out_features": s.out_features, "per_pass": s.per_pass,
                         "copies": n_copies, "m": m, "flops": flops, "bytes": nbytes,
                         "intensity": flops / nbytes, "seconds": seconds, "seconds_q1": t.q1,
                         "seconds_q3": t.q3, "gflops": flops / seconds / 1e9})
        del weights, inputs
    return pd.DataFrame(rows)


def _check_summary(summary: str) -> None:
    if summary not in ("median", "min"):
        raise ValueError(f"summary must be 'median' or 'min', got {summary!r}")


def pass_matmul_ms(table):
    """The matrix products of one whole forward pass, from :func:`measure_linear_gflops`: per
    ``dtype`` and ``m``, ``matmul_ms`` (sum of ``per_pass * seconds``, in milliseconds),
    ``flops`` and ``bytes`` (sums of ``per_pass`` times those of one product), ``intensity``
    (their ratio, FLOP/byte) and ``gflops`` (the rate achieved over the pass)."""
    need = {"dtype", "m", "per_pass", "seconds", "flops", "bytes"}
    missing = need - set(table.columns)
    if missing:
        raise ValueError(f"not a measure_linear_gflops table: missing columns {sorted(missing)}")
    t = table.assign(pass_seconds=table["per_pass"] * table["seconds"], pass_flops=table["per_pass"] * table["flops"],
                     pass_bytes=table["per_pass"] * table["bytes"])
    out = t.groupby(["dtype", "m"], as_index=False, sort=False)[["pass_seconds", "pass_flops", "pass_bytes"]].sum()
    out = out.sort_values(["dtype", "m"], kind="stable").reset_index(drop=True)
    out["matmul_ms"] = out["pass_seconds"] * 1e3
    out["intensity"] = out["pass_flops"] / out["pass_bytes"]
    out["gflops"] = out["pass_flops"] / out["pass_seconds"] / 1e9
    out = out.rename(columns={"pass_flops": "flops", "pass_bytes": "bytes"})
    return out[["dtype", "m", "matmul_ms", "flops", "bytes", "intensity", "gflops"]]


def fit_affine_cost(ns, ms) -> tuple[float, float]:
    """Least-squares fit ``time(n) = fixed + per_token * n`` to measured times ``ms`` of passes
    scoring ``ns`` tokens; returns ``(fixed, per_token)`` in the unit of ``ms``. On a machine
    where verification is nearly free ``per_token`` is small against ``fixed``."""
    x = np.asarray(list(ns), dtype=float)
    y = np.asarray(list(ms), dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2 or np.unique(x).size < 2:
        raise ValueError("need at least two different numbers of tokens, one time each")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("numbers of tokens and times must be finite")
    per_token, fixed = np.polyfit(x, y, 1)
    return float(fixed), float(per_token)


def measure_pass_breakdown(model, ks=(1, 2, 4, 8, 16), context: int = 128, repeats: int = 5,
                           warmup: int = 1, seed: int = 0, summary: str = "median"):
    """A forward pass of ``model`` scoring ``k`` tokens on top of a KV cache of ``context``
    tokens, next to the weight-matrix products it contains, timed in the same rounds.

    For each ``k`` (``k = 1`` is added if missing) two things are timed: the whole forward pass
    (the cache is cropped back to ``context`` first), and every ``torch.nn.Linear`` (or GPT-2
    ``Conv1D``) of the model -- its projections and LM head, with the model's own weights, in the
    model's order -- applied to ``k`` rows. :func:`specdec.profiling.time_interleaved` alternates them across all
    ``k``, so that drift of the machine falls on both alike; their difference is the *rest* of
    the pass (attention, norms, activations, dispatch).

    Returns a :class:`pandas.DataFrame` with one row per ``k``: ``k``, ``forward_ms`` and
    ``products_ms`` (the ``repeats`` rounds summarised by ``summary``, ``"median"`` or ``"min"``
    as in :func:`measure_linear_gflops`), ``rest_ms`` (their difference) and ``relative``
    (``forward_ms`` over that of ``k = 1``: the verify cost ``v(k)``).
    """
    import pandas as pd
    from transformers import DynamicCache

    from .profiling import time_interleaved

    ks = sorted({require_int("k", k, 1) for k in ks} | {1})
    require_int("context", context, 0)
    _check_summary(summary)
    if not hasattr(model, "config") or not callable(model):
        raise TypeError(f"expected a transformers causal LM, got {type(model).__name__}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and context + max(ks) > limit:
        raise ValueError(f"context + tokens = {context + max(ks)} exceeds the model's {limit} positions")
    from transformers.pytorch_utils import Conv1D

    # (in_features, product): nn.Linear computes x @ W.T + b; GPT-2's Conv1D stores W as [in, out]
    linears = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            linears.append((m.in_features, lambda x, m=m: torch.nn.functional.linear(x, m.weight, m.bias)))
        elif isinstance(m, Conv1D):
            linears.append((m.weight.shape[0], lambda x, m=m: torch.addmm(m.bias, x, m.weight)))
    if not linears:
        raise ValueError("the model has no torch.nn.Linear (or Conv1D) layers to time")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ctx_ids = torch.randint(vocab, (1, context), generator=g).to(device)
    new_ids = {k: torch.randint(vocab, (1, k), generator=g).to(device) for k in ks}
    widths = {w for w, _ in linears}
    rows = {(k, w): torch.randn(k, w, generator=g).to(device=device, dtype=dtype) for k in ks for w in widths}
    cache = DynamicCache(config=model.config)

    def forward(k):
        def run():
            extra = cache.get_seq_length() - context
            if extra:
                cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
            model(input_ids=new_ids[k], past_key_values=cache, use_cache=True)
        return run

    def products(k):
        def run():
            for width, product in linears:
                product(rows[(k, width)])
        return run

    fns = {}
    for k in ks:
        fns[("forward", k)] = forward(k)
        fns[("products", k)] = products(k)
    with torch.inference_mode():
        if context:
            model(input_ids=ctx_ids, past_key_values=cache, use_cache=True)
        times = time_interleaved(fns, repeats, warmup, device)
    stat = statistics.median if summary == "median" else min
    out = []
    for k in ks:
        fwd, prod = 1e3 * stat(times[("forward", k)]), 1e3 * stat(times[("products", k)])
        out.append({"k": k, "forward_ms": fwd, "products_ms": prod, "rest_ms": fwd - prod})
    table = pd.DataFrame(out)
    table["relative"] = table["forward_ms"] / table.loc[table["k"] == 1, "forward_ms"].iloc[0]
    return table
