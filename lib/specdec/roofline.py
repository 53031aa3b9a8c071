"""Why decoding is slow: FLOPs, bytes and arithmetic intensity of a decode step (chapter 1).

A decode step of a transformer at batch 1 reads every weight once and does two FLOPs
(one multiply, one add) per weight per token it scores. Its *arithmetic intensity*, FLOPs per
byte moved, is therefore about ``n_tokens * 2 / bytes_per_param``: far below what a GPU needs to
keep its arithmetic units busy. This module turns a transformers config into those counts and
holds the published peaks of common GPUs (``data/hardware.json``); :mod:`specdec.microbench`
measures the same two peaks, FLOP/s and bytes/s, on the machine it runs on.

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
model's weight matrices from its config, and :mod:`specdec.microbench` measures the peaks and
those products on this machine; :mod:`specdec.steptime` times whole forward passes (the verify
cost v(n)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

from .checks import require_int

__all__ = [
    "ModelShape",
    "StepCost",
    "GPU",
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
    "LinearShape",
    "linear_shapes",
]

_SUPPORTED = ("gpt2", "llama", "mistral", "phi3", "qwen2", "gemma3_text")


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
    extra_norm_params: int = 0  # per layer, beyond its two norms (Gemma 3: two more, and q/k norms)

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
    RMSNorm, grouped-query attention), and Gemma 3's text model, laid out as Llama's with four
    RMSNorms per layer and RMSNorms on the queries and keys.
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
        extra_norm_params=2 * d + 2 * head_dim if mt == "gemma3_text" else 0,
    )


def _layer_params(s: ModelShape) -> int:
    n = s.attn_matrix_params + s.mlp_matrix_params + 2 * s.norm_params + s.extra_norm_params
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
    require_int("context (tokens already in the KV cache)", context, 0)
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


