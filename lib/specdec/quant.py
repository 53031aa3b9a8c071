"""Weight-only quantized copies of a model, used as drafts (chapter 9).

A quantized copy of the target stores the decoder layers' linear weights in fewer bits and
computes in the target's dtype, so it agrees with the target often while a decode step, which
is memory-bound at batch 1 (chapter 1), reads fewer bytes.

* :func:`quantized_copy` -- a bitsandbytes ``"nf4"`` (4-bit NormalFloat) or ``"int8"``
  (LLM.int8()) copy of a saved model or of a model object; both formats run on the CPU as well
  as on CUDA. The output head and the embeddings stay unquantized.
* :func:`bnb_config` -- the ``transformers`` ``BitsAndBytesConfig`` of such a copy, which
  :func:`specdec.loaders.load_hf` also passes when it loads a quantized registry model.
* :func:`weight_only_copy` -- an int8 (one scale per row) or int4 (a scale and an offset per
  group of columns) copy whose matrix products run in torch's own CPU kernels for packed
  low-bit weights, the LM head included, after gpt-fast's ``quantize.py``.

:mod:`specdec.selfspec` counts the bytes these formats store and read.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path

import torch

from .checks import require_int

__all__ = [
    "bnb_config",
    "quantized_copy",
    "TORCH_BITS",
    "int8_weights",
    "int4_weights",
    "dequantize_int4",
    "WeightOnlyLinear",
    "torch_kernels_available",
    "weight_only_copy",
    "fastest_weight_only_copy",
]


def bnb_config(quantization: str, compute_dtype: torch.dtype):
    """The ``BitsAndBytesConfig`` of format ``quantization`` (``"nf4"`` or ``"int8"``)."""
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be 'nf4' or 'int8', got {quantization!r}")


def quantized_copy(source, quantization: str = "nf4", device: str = "cpu", compute_dtype: torch.dtype = torch.float32):
    """A bitsandbytes-quantised copy (``"nf4"`` or ``"int8"``) of a saved model or of a model object.

    ``source`` is a directory written by ``save_pretrained`` (e.g.
    :func:`specdec.loaders.smollm2_dir`) or a loaded model, which is saved to a temporary
    directory first. bitsandbytes runs both formats on the CPU as well as on CUDA; the output
    head and embeddings stay unquantised.
    """
    from transformers import AutoModelForCausalLM

    config = bnb_config(quantization, compute_dtype)
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not (path / "config.json").is_file():
                raise ValueError(f"{path} is not a saved model directory (no config.json); pass a model or a save_pretrained directory")
        else:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="specdec-quant-")))
            source.save_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=config, device_map=device, dtype=compute_dtype
        )
    return model.eval()


# --- weight-only copies on torch's own CPU kernels (chapter 9) -------------------------------
#
# The anchor is gpt-fast's quantize.py: int8 with one scale per output row, int4 in groups of
# ``group_size`` input columns with a scale and an offset per group. The matrix products run in
# torch's kernels for packed low-bit weights (``aten._weight_int8pack_mm``,
# ``aten._weight_int4pack_mm_for_cpu``), which read the small weights and never expand them.

TORCH_BITS = (8, 4)


def int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``weight ≈ q * scale[:, None]``; returns ``(q, scale)``."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp_(-128, 127).to(torch.int8), scale


def int4_weights(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit in groups of ``group_size`` columns: ``weight ≈ (q - 8) * s + z`` per group.

    Returns ``(q, scales_and_zeros)``: ``q`` int32 values 0..15 shaped like ``weight``, and the
    ``(in / group_size, out, 2)`` tensor of scales and offsets the int4 kernel takes.
    """
    w = weight.detach().float()
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of group_size {group_size}")
    groups = w.reshape(-1, group_size)
    lo, hi = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    zero = lo + 8 * scale
    q = ((groups - lo) / scale).round_().clamp_(0, 15).to(torch.int32).reshape(out_f, in_f)
    sz = torch.cat([scale.reshape(out_f, -1, 1), zero.reshape(out_f, -1, 1)], 2).transpose(0, 1).contiguous()
    return q, sz


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float weight an int4 copy stands for (what its matrix products compute with)."""
    sz = scales_and_zeros.float().transpose(0, 1).reshape(-1, 2)
    return ((q.reshape(-1, group_size).float() - 8) * sz[:, :1] + sz[:, 1:]).reshape(q.shape)


def _frozen(t: torch.Tensor) -> torch.nn.Parameter:
    # A parameter that is never trained, so that counting a model's weights counts these too.
    return torch.nn.Parameter(t, requires_grad=False)


class WeightOnlyLinear(torch.nn.Module):
    """A linear layer whose weight is stored in 8 or 4 bits; activations stay in ``dtype``."""

    def __init__(self, linear: torch.nn.Linear, bits: int, group_size: int = 64):
        super().__init__()
        if bits not in TORCH_BITS:
            raise ValueError(f"bits must be one of {TORCH_BITS}, got {bits!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        dtype = linear.weight.dtype
        if bits == 8:
            q, scale = int8_weights(linear.weight)
            self.weight_q = _frozen(q)
            self.scale = _frozen(scale.to(dtype))
        else:
            q, sz = int4_weights(linear.weight, group_size)
            self.weight_q = _frozen(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
            self.scale = _frozen(sz.to(dtype))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(),
                                                                        requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_q, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight_q, self.group_size, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"


def torch_kernels_available(bits: int) -> bool:
    """Whether this torch build has the CPU kernel for ``bits``-bit weights."""
    name = "_weight_int8pack_mm" if bits == 8 else "_weight_int4pack_mm_for_cpu"
    return hasattr(torch.ops.aten, name)


def weight_only_copy(source: torch.nn.Module, bits: int, group_size: int = 64,
                     dtype: torch.dtype = torch.float32, head: bool = True) -> torch.nn.Module:
    """A copy of ``source`` whose linear layers hold ``bits``-bit weights (the LM head too,
    unless ``head=False``), as gpt-fast quantizes its drafts.

    Embeddings and norms stay in ``dtype``. Linear layers whose input width is not a multiple
    of ``group_size`` (4-bit only) stay as they are. The copy runs on the CPU.
    """
    if bits not in TORCH_BITS:
        raise ValueError(f"bits must be one of {TORCH_BITS}, got {bits!r}")
    require_int("group_size", group_size, 1)
    if not torch_kernels_available(bits):
        raise RuntimeError(f"this torch build has no CPU kernel for {bits}-bit weights")
    if next(source.parameters()).device.type != "cpu":
        raise ValueError("weight_only_copy builds CPU copies; move the model to the CPU first")
    model = copy.deepcopy(source).to(dtype).eval()

    head_module = source.get_output_embeddings() if hasattr(source, "get_output_embeddings") else None
    head_name = next((n for n, m in source.named_modules() if m is head_module), None)

    def swap(module, prefix=""):
        for name, child in list(module.named_children()):
            full = f"{prefix}{name}"
            if full == head_name and not head:
                continue
            if type(child) is torch.nn.Linear and (bits == 8 or child.in_features % group_size == 0):
                setattr(module, name, WeightOnlyLinear(child, bits, group_size))
            else:
                swap(child, f"{full}.")

    with torch.no_grad():
        swap(model)
    return model


def fastest_weight_only_copy(source: torch.nn.Module, bits: int, group_size: int = 64, context: int = 128,
                             repeats: int = 5) -> tuple[torch.nn.Module, dict[str, float]]:
    """The :func:`weight_only_copy` whose decode step is faster here, float32 or bfloat16
    activations, and the measured milliseconds of each (timed interleaved).

    torch's low-bit CPU kernels are vectorised for some activation dtypes and not for others,
    and which is which depends on the build and the processor: measure, do not assume.
    """
    import statistics

    from .steptime import time_forwards

    copies = {name: weight_only_copy(source, bits, group_size, dtype=getattr(torch, name))
              for name in ("float32", "bfloat16")}
    times = time_forwards(copies, [1], context, repeats=repeats, desc=f"int{bits} activations")
    ms = {name: statistics.median(t[1]) * 1e3 for name, t in times.items()}
    return copies[min(ms, key=ms.get)], ms
