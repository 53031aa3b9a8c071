"""Why decoding is slow: FLOPs, bytes and arithmetic intensity of a decode step (chapter 1).

A decode step of a transformer at batch 1 reads every weight once and does two FLOPs
(one multiply, one add) per weight per token it scores. Its *arithmetic intensity*, FLOPs per
byte moved, is therefore about ``n_tokens * 2 / bytes_per_param``: far below what a GPU needs to
keep its arithmetic units busy. This module turns a transformers config into those counts, holds
the published peaks of common GPUs (``data/hardware.json``) and measures the same two peaks,
FLOP/s and bytes/s, on the machine it runs on.

Counting conventions (the chapter derives them by hand):

* **FLOPs**: ``2 * matmul_params * n_tokens`` for the weight matrices (including the LM head, since
  speculative verification needs logits at every scored position) plus the attention scores and
  the weighted sum of values, ``4 * layers * heads * head_dim`` per (query, key) pair. Biases,
  norms, activations and softmax are a fraction of a percent and are left out.
* **Bytes**: every weight a step touches, read once (an embedding table contributes only the rows
  it looks up, unless it is tied to the LM head, which reads all of it), plus the KV cache read
  (context and new tokens) and written (new tokens). Activations are left out: at batch 1 they are
  a few kilobytes per token.

The roofline assumes that every matrix product runs at one of the two peaks. Whether the products
of a pass that scores a few tokens do is measured, not assumed: :func:`linear_shapes` lists a
model's weight matrices from its config, :func:`measure_linear_gflops` times them with ``m`` rows
(the tokens one pass scores), :func:`pass_matmul_ms` adds them up into one pass, and
:func:`fit_affine_cost` summarises measured passes as a fixed part plus a price per token.
:func:`measure_pass_breakdown` times a model's whole pass beside its own products, in the same
rounds, so that what is left over -- the rest of the pass -- is measured too.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import require_int
from .profiling import time_repeated

__all__ = [
    "ModelShape",
    "StepCost",
    "GPU",
    "CostCurve",
    "time_forwards",
    "model_shape",
    "param_count",
    "matmul_param_count",
    "kv_bytes_per_token",
    "decode_step_cost",
    "min_ms_per_token",
    "roofline_ms",
    "ridge_point",
    "attainable_flops",
    "crossover_tokens",
    "load_hardware",
    "measure_matmul_flops",
    "measure_bandwidth",
    "measure_forward_ms",
    "verify_cost_curve",
    "LinearShape",
    "linear_shapes",
    "measure_linear_gflops",
    "pass_matmul_ms",
    "fit_affine_cost",
    "measure_pass_breakdown",
]

_SUPPORTED = ("gpt2", "llama", "mistral", "phi3", "qwen2")


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that its cost depends on."""

    model_type: str
    hidden: int  # d_model
    layers: int
    heads: int  # query heads
    kv_heads: int  # key/value heads (< heads with grouped-query attention)
    head_dim: int
    intermediate: int  # MLP hidden width
    vocab: int
    tied: bool  # LM head shares the input embedding matrix
    gated_mlp: bool  # gate, up, down (SwiGLU) rather than up, down (GELU)
    positions: int  # rows of a learned position table (0 for rotary embeddings)
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norm_params: int  # parameters of one norm: d for RMSNorm, 2d for LayerNorm

    @property
    def attn_matrix_params(self) -> int:
        """Weights of the q, k, v and output projections of one layer (no biases)."""
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.hidden
        return q + kv + o

    @property
    def mlp_matrix_params(self) -> int:
        """Weights of the MLP of one layer (no biases)."""
        return (3 if self.gated_mlp else 2) * self.hidden * self.intermediate


def _config_of(config):
    """Accept a transformers config or a model that carries one."""
    cfg = getattr(config, "config", config)
    if not hasattr(cfg, "model_type"):
        raise TypeError(
            f"expected a transformers config (or a model with .config), got {type(config).__name__}; "
            "build one with specdec.registry.model_config(key) or transformers.AutoConfig"
        )
    return cfg


def model_shape(config) -> ModelShape:
    """Read the cost-relevant sizes from a transformers config (or a model).

    Supports GPT-2 (two-matrix GELU MLP, learned positions, LayerNorm with biases) and the
    Llama family -- Llama, Mistral, Phi-3, Qwen2 -- (gated three-matrix MLP, rotary positions,
    RMSNorm, grouped-query attention).
    """
    cfg = _config_of(config)
    mt = cfg.model_type
    if mt not in _SUPPORTED:
        raise ValueError(
            f"model_type {mt!r} is not supported; supported: {', '.join(_SUPPORTED)}. "
            "Add its parameter layout to specdec.roofline.model_shape."
        )
    if mt == "gpt2":
        d, heads = cfg.n_embd, cfg.n_head
        if d % heads:
            raise ValueError(f"n_embd={d} is not divisible by n_head={heads}")
        return ModelShape(
            model_type=mt, hidden=d, layers=cfg.n_layer, heads=heads, kv_heads=heads,
            head_dim=d // heads, intermediate=cfg.n_inner or 4 * d, vocab=cfg.vocab_size,
            tied=bool(getattr(cfg, "tie_word_embeddings", True)), gated_mlp=False,
            positions=cfg.n_positions, qkv_bias=True, o_bias=True, mlp_bias=True,
            norm_params=2 * d,
        )
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    attention_bias = bool(getattr(cfg, "attention_bias", False))
    return ModelShape(
        model_type=mt, hidden=d, layers=cfg.num_hidden_layers, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
        tied=bool(getattr(cfg, "tie_word_embeddings", False)), gated_mlp=True, positions=0,
        qkv_bias=attention_bias or mt == "qwen2",  # Qwen2 always has q, k, v biases
        o_bias=attention_bias and mt != "qwen2",
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)), norm_params=d,
    )


def _layer_params(s: ModelShape) -> int:
    n = s.attn_matrix_params + s.mlp_matrix_params + 2 * s.norm_params
    if s.qkv_bias:
        n += (s.heads + 2 * s.kv_heads) * s.head_dim
    if s.o_bias:
        n += s.hidden
    if s.mlp_bias:
        n += (2 * s.intermediate if s.gated_mlp else s.intermediate) + s.hidden
    return n


def param_count(config) -> int:
    """Number of parameters of the model a config describes (a tied LM head counted once).

    Equals ``sum(p.numel() for p in model.parameters())`` of a transformers build of the config.
    """
    s = model_shape(config)
    embeddings = s.vocab * s.hidden + s.positions * s.hidden
    head = 0 if s.tied else s.vocab * s.hidden
    return embeddings + s.layers * _layer_params(s) + s.norm_params + head


def matmul_param_count(config) -> int:
    """Weights that take part in a matrix multiply per scored token: the layers' projections and
    the LM head. (Embedding look-ups and norms are not matrix multiplies.)"""
    s = model_shape(config)
    return s.layers * (s.attn_matrix_params + s.mlp_matrix_params) + s.vocab * s.hidden


def kv_bytes_per_token(config, bytes_per_elem: float = 2) -> int | float:
    """Bytes of KV cache one token occupies: ``2 (K and V) * layers * kv_heads * head_dim * bytes``.

    Grouped-query attention stores only ``kv_heads`` heads: Llama-3-8B in fp16 needs
    ``2 * 32 * 8 * 128 * 2 = 131072`` bytes per token, a quarter of its 32 query heads.
    """
    if isinstance(bytes_per_elem, bool) or not isinstance(bytes_per_elem, Real) or bytes_per_elem <= 0:
        raise ValueError(f"bytes_per_elem must be a positive number, got {bytes_per_elem!r}")
    s = model_shape(config)
    return 2 * s.layers * s.kv_heads * s.head_dim * bytes_per_elem


# --------------------------------------------------------------------------- cost of a step


@dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one forward pass that scores ``n_tokens`` new tokens after ``context``."""

    n_tokens: int
    context: int
    matmul_flops: float
    attention_flops: float
    weight_bytes: float
    kv_read_bytes: float
    kv_write_bytes: float

    @property
    def flops(self) -> float:
        return self.matmul_flops + self.attention_flops

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved."""
        return self.flops / self.bytes


def _check_bytes(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number of bytes (e.g. 2 for fp16, 4 for fp32), got {value!r}")
    return float(value)


def decode_step_cost(config, n_tokens: int = 1, context: int = 0, bytes_per_param: float = 2,
                     kv_bytes: float = 2) -> StepCost:
    """FLOPs and bytes of one forward pass scoring ``n_tokens`` new tokens at batch 1 on top of a
    KV cache holding ``context`` tokens.

    ``bytes_per_param`` is the storage size of a weight (2 for fp16/bf16, 4 for fp32, about 0.5
    for 4-bit), ``kv_bytes`` that of one cached key or value element.
    """
    n = require_int("n_tokens", n_tokens, 1)
    if isinstance(context, bool) or not isinstance(context, Integral) or context < 0:
        raise ValueError(f"context must be a non-negative integer (tokens already in the KV cache), got {context!r}")
    bpp = _check_bytes("bytes_per_param", bytes_per_param)
    kvb = _check_bytes("kv_bytes", kv_bytes)
    s = model_shape(config)

    matmul_flops = 2.0 * matmul_param_count(config) * n
    # New token i (1-based) attends to context + i keys: QK^T and the weighted sum of V are
    # 2 * head_dim FLOPs each per (query head, key) pair.
    pairs = n * context + n * (n + 1) // 2
    attention_flops = 4.0 * s.layers * s.heads * s.head_dim * pairs

    # Weights touched: everything except the embedding rows that are not looked up.
    rows = min(n, s.vocab)
    untouched = s.positions * s.hidden - min(n, s.positions) * s.hidden
    if not s.tied:  # the input table is only gathered; a tied one is read in full by the LM head
        untouched += (s.vocab - rows) * s.hidden
    weight_bytes = (param_count(config) - untouched) * bpp

    per_token = kv_bytes_per_token(config, kvb)
    return StepCost(
        n_tokens=n, context=int(context), matmul_flops=matmul_flops, attention_flops=attention_flops,
        weight_bytes=float(weight_bytes), kv_read_bytes=float((context + n) * per_token),
        kv_write_bytes=float(n * per_token),
    )


def min_ms_per_token(config, bandwidth_bytes_per_s: float, context: int = 0, bytes_per_param: float = 2,
                     kv_bytes: float = 2) -> float:
    """The memory-bound lower bound on the time of one decode step, in milliseconds:
    the bytes a step must move divided by the memory bandwidth."""
    bw = _check_rate("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    cost = decode_step_cost(config, 1, context, bytes_per_param, kv_bytes)
    return cost.bytes / bw * 1e3


def roofline_ms(config, n_tokens: int, peak_flops: float, bandwidth_bytes_per_s: float, context: int = 0,
                bytes_per_param: float = 2, kv_bytes: float = 2) -> float:
    """The roofline model's time for one forward pass, in milliseconds: the longer of the time
    to do its FLOPs at peak and the time to move its bytes at full bandwidth."""
    peak = _check_rate("peak_flops", peak_flops)
    bw = _check_rate("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    cost = decode_step_cost(config, n_tokens, context, bytes_per_param, kv_bytes)
    return max(cost.flops / peak, cost.bytes / bw) * 1e3


def _check_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number per second, got {value!r}")
    return float(value)


def ridge_point(peak_flops: float, bandwidth_bytes_per_s: float) -> float:
    """The arithmetic intensity (FLOPs/byte) at which a machine turns from memory-bound to
    compute-bound: ``peak_flops / bandwidth``."""
    return _check_rate("peak_flops", peak_flops) / _check_rate("bandwidth_bytes_per_s", bandwidth_bytes_per_s)


def attainable_flops(intensity, peak_flops: float, bandwidth_bytes_per_s: float):
    """The roofline: ``min(peak_flops, intensity * bandwidth)``. ``intensity`` may be a number or
    an array of FLOPs/byte; the result has the same shape."""
    peak = _check_rate("peak_flops", peak_flops)
    bw = _check_rate("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    x = np.asarray(intensity, dtype=float)
    if np.any(~np.isfinite(x)) or np.any(x < 0):
        raise ValueError("intensity must be finite and non-negative (FLOPs per byte)")
    out = np.minimum(peak, x * bw)
    return float(out) if out.ndim == 0 else out


def crossover_tokens(config, peak_flops: float, bandwidth_bytes_per_s: float, context: int = 0,
                     bytes_per_param: float = 2, kv_bytes: float = 2, max_tokens: int = 1 << 20) -> int:
    """The smallest number of tokens scored in one pass whose arithmetic intensity reaches the
    ridge point, i.e. from which on the pass is compute-bound rather than memory-bound.

    Up to that many tokens, scoring them together costs about as much as scoring one.
    """
    ridge = ridge_point(peak_flops, bandwidth_bytes_per_s)
    max_tokens = require_int("max_tokens", max_tokens, 1)

    def reaches(n: int) -> bool:
        return decode_step_cost(config, n, context, bytes_per_param, kv_bytes).intensity >= ridge

    if not reaches(max_tokens):
        raise ValueError(f"intensity stays below the ridge point ({ridge:.1f} FLOP/byte) up to {max_tokens} tokens; "
                         "raise max_tokens")
    lo, hi = 0, max_tokens  # reaches(hi) is True; intensity grows with n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 1 and reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------- published peaks


@dataclass(frozen=True)
class GPU:
    """Published peak numbers of one GPU, with where they come from."""

    key: str
    name: str
    peak_flops: float  # dense tensor-core FLOP/s at ``dtype`` (no 2:4 sparsity)
    dtype: str
    bandwidth: float  # memory bandwidth, bytes/s
    memory_gb: float
    source_title: str
    source_url: str
    note: str = ""

    @property
    def ridge_point(self) -> float:
        return ridge_point(self.peak_flops, self.bandwidth)


def _data_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "data" / "hardware.json").is_file():
            return parent / "data"
    raise FileNotFoundError("data/hardware.json not found above " + str(here))


def load_hardware(path: str | Path | None = None) -> dict[str, GPU]:
    """The published peaks in ``data/hardware.json`` as ``{key: GPU}``."""
    path = Path(path) if path is not None else _data_dir() / "hardware.json"
    raw = json.loads(path.read_text())
    gpus = {}
    for key, g in raw["gpus"].items():
        gpus[key] = GPU(
            key=key, name=g["name"], peak_flops=float(g["dense_tensor_tflops"]) * 1e12, dtype=g["dtype"],
            bandwidth=float(g["memory_bandwidth_gb_s"]) * 1e9, memory_gb=float(g["memory_gb"]),
            source_title=g["source"]["title"], source_url=g["source"]["url"], note=g.get("note", ""),
        )
    return gpus


# --------------------------------------------------------------------------- measured here


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
    from .cache import CachedLM
    from .profiling import time_interleaved

    if not isinstance(models, dict):
        models = {"model": models}
    ns = [require_int("number of tokens", n, 1) for n in ns]
    repeats = require_int("repeats", repeats, 1)
    if isinstance(context, bool) or not isinstance(context, Integral) or context < 0:
        raise ValueError(f"context must be a non-negative integer, got {context!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, Integral) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
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


# --------------------------------------------------------------------------- the model's own matrices


@dataclass(frozen=True)
class LinearShape:
    """One shape of weight matrix a forward pass multiplies by, and how often it does so per pass.

    A pass that scores ``m`` tokens computes ``x @ W.T`` with ``x`` of shape ``[m, in_features]``
    and ``W`` of shape ``[out_features, in_features]``, ``per_pass`` times (once per layer, or
    once per layer for each of several projections of the same shape).
    """

    names: tuple[str, ...]  # the projections of this shape, e.g. ("q_proj", "o_proj")
    in_features: int
    out_features: int
    per_pass: int  # products of this shape in one forward pass

    @property
    def label(self) -> str:
        return f"{'/'.join(self.names)} {self.in_features}\u2192{self.out_features}"

    def flops(self, m: int) -> int:
        """Multiply-adds of one product with ``m`` rows, two FLOPs each."""
        return 2 * require_int("m", m, 1) * self.in_features * self.out_features

    def bytes(self, m: int, bytes_per_elem: float) -> float:
        """Bytes one product moves: its weights once, its ``m`` input rows and ``m`` output rows."""
        m = require_int("m", m, 1)
        return (self.in_features * self.out_features + m * (self.in_features + self.out_features)) * bytes_per_elem


def linear_shapes(config) -> list[LinearShape]:
    """The weight matrices one forward pass multiplies by, read from a transformers config (or a
    model), grouped by shape: for the Llama family the q, k, v and output projections, the
    gate, up and down projections of the MLP and the LM head (Phi-3 fuses q, k, v into
    ``qkv_proj`` and gate and up into ``gate_up_proj``); for GPT-2 the fused ``c_attn``, the two
    ``c_proj`` and ``c_fc``. Projections of equal shape share one entry, with
    ``per_pass`` counting all of them, so ``sum(s.per_pass * s.in_features * s.out_features)``
    equals :func:`matmul_param_count`.
    """
    s = model_shape(config)
    d, q, kv = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    if s.model_type == "phi3":  # q, k, v fused in qkv_proj; gate and up fused in gate_up_proj
        per_layer = [("qkv_proj", d, q + 2 * kv), ("o_proj", q, d), ("gate_up_proj", d, 2 * s.intermediate),
                     ("down_proj", s.intermediate, d)]
    elif s.gated_mlp:
        per_layer = [("q_proj", d, q), ("k_proj", d, kv), ("v_proj", d, kv), ("o_proj", q, d),
                     ("gate_proj", d, s.intermediate), ("up_proj", d, s.intermediate),
                     ("down_proj", s.intermediate, d)]
    else:  # GPT-2: q, k, v in one fused matrix
        per_layer = [("c_attn", d, 3 * d), ("attn.c_proj", d, d), ("c_fc", d, s.intermediate),
                     ("mlp.c_proj", s.intermediate, d)]
    grouped: dict[tuple[int, int], list] = {}
    for name, fan_in, fan_out in per_layer:
        entry = grouped.setdefault((fan_in, fan_out), [[], 0])
        entry[0].append(name)
        entry[1] += s.layers
    grouped.setdefault((d, s.vocab), [[], 0])
    grouped[(d, s.vocab)][0].append("lm_head")
    grouped[(d, s.vocab)][1] += 1
    return [LinearShape(tuple(names), fan_in, fan_out, n) for (fan_in, fan_out), (names, n) in grouped.items()]


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
    if isinstance(context, bool) or not isinstance(context, Integral) or context < 0:
        raise ValueError(f"context must be a non-negative integer, got {context!r}")
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
