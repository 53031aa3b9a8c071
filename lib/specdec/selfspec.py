"""Self-speculation with a quantised copy of the target (chapter 9): bytes and agreement.

A 4-bit copy of the target is a natural draft: it was made from the target, so it agrees with
it often, and at batch 1 a decode step is memory-bound (chapter 1), so a draft that reads a
quarter of the bytes should cost about a quarter of the time. This module holds the two
numbers that argument needs:

* :func:`decode_weight_bytes` -- the weight bytes one decode step reads when the decoder
  layers' linear layers are stored in a bitsandbytes format (``"nf4"``, ``"int8"``) and
  everything else (embeddings, output head, norms) stays in the compute dtype, as
  :func:`specdec.quant.quantized_copy` leaves it; :func:`stored_weight_bytes` counts the
  same on a loaded model, quantisation state included, to check the formula;
* :func:`acceptance_along` -- the acceptance probability of a draft at every position of a
  real text, from one forward pass of each model.

Storage per weight matrix with ``n = out * in`` weights (bitsandbytes defaults, as
:func:`specdec.quant.quantized_copy` configures them):

* ``nf4``: two 4-bit codes per byte, ``n / 2`` bytes, plus one float32 scale (``absmax``) per
  block of :data:`NF4_BLOCKSIZE` weights;
* ``int8`` (LLM.int8()): ``n`` bytes plus one float32 scale per output row.
"""

from __future__ import annotations

import math

import torch

from .checks import require_int
from .roofline import decode_step_cost, model_shape
from .sampling import SamplingParams, acceptance_probability, probs_from_logits

__all__ = [
    "FLOAT_BYTES",
    "QUANTIZED_FORMATS",
    "NF4_BLOCKSIZE",
    "layer_matrix_shapes",
    "matrix_bytes",
    "decode_weight_bytes",
    "stored_weight_bytes",
    "acceptance_along",
]

#: Bytes per weight of the unquantised formats.
FLOAT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0}
#: The bitsandbytes formats :func:`specdec.quant.quantized_copy` makes.
QUANTIZED_FORMATS = ("int8", "nf4")
#: Weights per float32 ``absmax`` scale in bitsandbytes' 4-bit formats.
NF4_BLOCKSIZE = 64


def _check_format(fmt: str) -> None:
    if fmt not in FLOAT_BYTES and fmt not in QUANTIZED_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {', '.join([*FLOAT_BYTES, *QUANTIZED_FORMATS])}")


def layer_matrix_shapes(config) -> list[tuple[int, int]]:
    """``(out_features, in_features)`` of the linear layers of one decoder layer.

    Llama-family layout (q, k, v, o projections; gate, up, down of the gated MLP): these are
    the matrices bitsandbytes quantises. GPT-2 stores its projections as ``Conv1D`` and is
    not supported.
    """
    s = model_shape(config)
    if not s.gated_mlp:
        raise ValueError(
            f"layer_matrix_shapes covers the Llama family (gated MLP, nn.Linear projections); "
            f"model_type {s.model_type!r} is not supported"
        )
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return [
        (q, s.hidden), (kv, s.hidden), (kv, s.hidden), (s.hidden, q),  # q, k, v, o
        (s.intermediate, s.hidden), (s.intermediate, s.hidden), (s.hidden, s.intermediate),  # gate, up, down
    ]


def matrix_bytes(out_features: int, in_features: int, fmt: str) -> float:
    """Bytes that one ``out x in`` weight matrix occupies in format ``fmt`` (scales included)."""
    _check_format(fmt)
    for name, v in (("out_features", out_features), ("in_features", in_features)):
        require_int(name, v, 1)
    n = out_features * in_features
    if fmt in FLOAT_BYTES:
        return n * FLOAT_BYTES[fmt]
    if fmt == "int8":
        return n + 4.0 * out_features
    return n / 2 + 4.0 * math.ceil(n / NF4_BLOCKSIZE)


def decode_weight_bytes(config, fmt: str, unquantised: str = "fp16") -> float:
    """Weight bytes one decode step reads with the decoder layers' linear layers in ``fmt``.

    For a float ``fmt`` every weight is in that format (this is
    ``roofline.decode_step_cost(config, bytes_per_param=...).weight_bytes``). For ``"nf4"`` or
    ``"int8"`` the decoder layers' projections are quantised and everything else -- embeddings,
    output head, norms -- stays in ``unquantised`` (``"fp32"`` for the book's SmolLM2 copies,
    ``"fp16"`` for a GPU model), as bitsandbytes leaves them. An untied input embedding
    contributes only the row it looks up, as in chapter 1.
    """
    _check_format(fmt)
    if unquantised not in FLOAT_BYTES:
        raise ValueError(f"unquantised must be one of {', '.join(FLOAT_BYTES)}, got {unquantised!r}")
    if fmt in FLOAT_BYTES:
        return decode_step_cost(config, bytes_per_param=FLOAT_BYTES[fmt]).weight_bytes
    b = FLOAT_BYTES[unquantised]
    shapes = layer_matrix_shapes(config)
    layers = model_shape(config).layers
    float_bytes = decode_step_cost(config, bytes_per_param=b).weight_bytes
    matrix_params = layers * sum(o * i for o, i in shapes)
    return float_bytes - matrix_params * b + layers * sum(matrix_bytes(o, i, fmt) for o, i in shapes)


def stored_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's weights as stored: its parameters, each tensor once (a tied head
    counts once), plus the scales bitsandbytes keeps beside quantised weights
    (``quant_state.absmax`` of 4-bit weights, ``SCB`` of int8 weights), which
    ``model.get_memory_footprint()`` leaves out. Buffers that are not weights (rotary
    frequencies) are not counted."""
    seen: set[int] = set()
    total = 0

    def add(t) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for t in model.parameters():
        add(t)
        state = getattr(t, "quant_state", None)
        if state is not None:
            add(state.absmax)
            if getattr(state, "nested", False):
                add(state.state2.absmax)
        add(getattr(t, "SCB", None))
    return total


@torch.inference_mode()
def acceptance_along(draft, target, ids: torch.Tensor, start: int = 1, params=SamplingParams()):
    """Acceptance probability ``sum_x min(p(x), q(x))`` of ``draft`` for ``target`` at every
    position of the text ``ids`` from ``start`` on, from one forward pass of each model.

    Entry ``i`` scores the prediction of token ``ids[start + i]`` from the tokens before it.
    With greedy ``params`` (temperature 0) it is 1 where the two argmaxes agree and 0
    elsewhere. The text is fixed (teacher forcing): it is the acceptance each position would
    have if speculative decoding reached it with this text before it. ``ids`` may also be a
    batch ``(n, T)`` of texts of one length; the result is then ``(n, T - start)``. ``params``
    may also be a list or tuple of :class:`~specdec.sampling.SamplingParams`; the result is
    then a list with one tensor per entry, from the same two forward passes.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    if ids.ndim not in (1, 2) or not 1 <= start < ids.shape[-1]:
        raise ValueError(f"need a 1-D token sequence (or a 2-D batch) and 1 <= start < its length, "
                         f"got shape {tuple(ids.shape)}, start={start}")
    many = isinstance(params, (list, tuple))
    all_params = list(params) if many else [params]
    if not all_params or not all(isinstance(p, SamplingParams) for p in all_params):
        raise ValueError("params must be a SamplingParams or a non-empty list of them")
    batch = ids if ids.ndim == 2 else ids[None]
    rows = slice(start - 1, batch.shape[1] - 1)
    target_logits = target(batch.to(next(target.parameters()).device)).logits[:, rows].float().cpu()
    draft_logits = draft(batch.to(next(draft.parameters()).device)).logits[:, rows].float().cpu()
    out = [acceptance_probability(probs_from_logits(target_logits, p), probs_from_logits(draft_logits, p))
           for p in all_params]
    out = out if ids.ndim == 2 else [a[0] for a in out]
    return out if many else out[0]
