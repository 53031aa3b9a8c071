"""The target's compute path, chosen by measuring it on the machine that runs (chapter 5).

A *path* (:class:`Path`) is how one forward pass is computed: the dtype of the weights and
activations, and how the linear layers' weights are laid out. None of
it changes what the loops compute, only how fast: on every path the greedy speculative
output equals that same path's autoregressive output (``tests/test_fastpath.py``).

* ``linear="plain"`` -- the weights as stored; ``nn.Linear`` calls the BLAS library torch was
  built with (MKL on x86). MKL's matrix-vector kernels are tuned per CPU vendor and can be
  slow elsewhere.
* ``linear="packed"`` -- each weight re-laid out once (``torch.ops.mkldnn._reorder_linear_weight``)
  for oneDNN's matrix kernels (``torch.ops.mkldnn._linear_pointwise``), the same step
  ``torch.compile`` takes when it freezes a model for a CPU.
* ``dtype="bfloat16"`` -- half the bytes per weight; fast only where the CPU has bfloat16
  dot-product or matrix units (``avx512_bf16``, AMX), and a slightly different model.

:func:`prepare` builds a copy of a model on a path (the original is left as it was, so
``transformers``' own ``generate()`` still runs the model as loaded); :func:`measure_paths`
times a decode step and a verification pass on each candidate, interleaved; :func:`choose_path`
picks the fastest. Autoregressive and speculative runs then share that one target copy, so a
speedup compares like with like.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from .profiling import summarize

__all__ = [
    "Path",
    "PLAIN",
    "PackedLinear",
    "cpu_flags",
    "packing_available",
    "candidate_paths",
    "prepare",
    "measure_paths",
    "choose_path",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Path:
    """One way to compute the target's forward pass."""

    dtype: str = "float32"
    linear: str = "plain"  # "plain" or "packed"

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.linear not in ("plain", "packed"):
            raise ValueError(f"linear must be 'plain' or 'packed', got {self.linear!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def label(self) -> str:
        return f"{self.dtype}, {self.linear}"

    def to_dict(self) -> dict:
        return asdict(self)


PLAIN = Path()


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` whose weight was re-laid out once for oneDNN's kernels (CPU only)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous())
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(),
                                                                        requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def packing_available() -> bool:
    """Whether this torch build can pack linear weights for oneDNN."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def candidate_paths(device: torch.device | str = "cpu") -> list[Path]:
    """The paths worth measuring here: packing where oneDNN exists, bfloat16 where the CPU
    (or GPU) has units for it. Plain float32 always comes first."""
    device = torch.device(device)
    paths = [PLAIN]
    if device.type == "cuda":
        return paths + [Path(dtype="bfloat16")] if torch.cuda.is_bf16_supported() else paths
    if packing_available():
        paths.append(Path(linear="packed"))
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        paths.append(Path(dtype="bfloat16"))
        if packing_available():
            paths.append(Path(dtype="bfloat16", linear="packed"))
    return paths


def prepare(model: torch.nn.Module, path: Path = PLAIN) -> torch.nn.Module:
    """A copy of ``model`` computing on ``path`` (``model`` itself is not changed).

    The plain float32 path returns ``model`` itself when it already is float32. The copy
    keeps ``config`` and ``generation_config``, so the loops and ``generate()`` accept it.
    """
    if not isinstance(path, Path):
        raise ValueError(f"path must be a specdec.fastpath.Path, got {type(path).__name__}")
    device = next(model.parameters()).device
    if path.linear == "packed" and (device.type != "cpu" or not packing_available()):
        raise ValueError("packed linear weights need a CPU and a torch built with oneDNN (mkldnn)")
    if path == PLAIN and next(model.parameters()).dtype == torch.float32:
        return model
    out = copy.deepcopy(model).to(path.torch_dtype).eval()
    if path.linear == "packed":
        _pack_linears(out)
    out.specdec_path = path
    return out


def _pack_linears(module: torch.nn.Module) -> None:
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            setattr(module, name, PackedLinear(child))
        else:
            _pack_linears(child)


def measure_paths(
    model: torch.nn.Module,
    paths: list[Path] | None = None,
    context: int = 128,
    n_tokens: tuple[int, ...] = (1, 5),
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
):
    """Milliseconds of one forward pass scoring ``n`` tokens after ``context`` cached ones, for
    each path and each ``n`` in ``n_tokens``, timed interleaved by
    :func:`specdec.steptime.time_forwards`.

    Returns a DataFrame with one row per (path, n): ``path``, ``n_tokens``, ``ms`` (median),
    ``q1``, ``q3``, ``vs_plain`` (the first path's median over this one's; the first candidate
    is plain float32).
    """
    import pandas as pd

    from .steptime import time_forwards

    paths = candidate_paths(next(model.parameters()).device) if paths is None else list(paths)
    if not paths:
        raise ValueError("no paths to measure")
    prepared = {p.label: prepare(model, p) for p in paths}
    times = time_forwards(prepared, n_tokens, context, repeats, warmup, seed, "paths")
    rows = []
    for n in n_tokens:
        base = summarize(times[paths[0].label][n]).median
        for p in paths:
            s = summarize(times[p.label][n])
            rows.append(dict(path=p.label, **p.to_dict(), n_tokens=n, ms=s.median * 1e3, q1=s.q1 * 1e3,
                             q3=s.q3 * 1e3, vs_plain=base / s.median))
    return pd.DataFrame(rows)


def choose_path(model: torch.nn.Module, paths: list[Path] | None = None, table=None, **kwargs):
    """The path whose decode step (one token) was fastest here, and the table of
    :func:`measure_paths` it was chosen from.

    ``paths`` defaults to the :func:`candidate_paths` in the model's own dtype: a bfloat16 copy
    of a float32 model is another model, whose greedy speculative output matches its own
    autoregressive output only up to near-ties in bfloat16's coarser rounding, so it is
    chosen only when asked for. ``table``, a table :func:`measure_paths` already measured,
    saves measuring again.
    """
    if paths is None:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        paths = [p for p in candidate_paths(next(model.parameters()).device) if p.dtype == dtype] or [PLAIN]
    if table is None:
        table = measure_paths(model, paths, **kwargs)
    labels = {p.label for p in paths}
    steps = table[(table["n_tokens"] == 1) & table["path"].isin(labels)]
    if steps.empty:
        raise ValueError("choose_path needs n_tokens to include 1 (the decode step)")
    best = steps.loc[steps["ms"].idxmin()]
    return Path(dtype=best["dtype"], linear=best["linear"]), table
