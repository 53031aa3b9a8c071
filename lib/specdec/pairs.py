"""The book's one loaded pair: what a benchmark or a chapter runs, whatever its kind of drafter.

* :class:`BenchPair` -- the draft (none for prompt lookup and the head), the target and the path
  our loops run it on, the tokenizer and stop tokens, and what the kind of drafter needs (the
  trained head; a cross-vocabulary pair's codecs and mapping); :meth:`BenchPair.drafter` builds
  a fresh drafter of its kind.
* :func:`load_bench_pair` -- a registry pair or a synthetic one, by name;
  :func:`load_cross_vocab_pair` -- a pair whose draft has a vocabulary of its own (chapter 8).
* the names: :func:`synthetic_pair_name`, :func:`parse_synthetic`, :data:`HF_PEER`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .analysis import HF_PEER  # noqa: F401  (the one table of method names: analysis)
from .crossvocab import StringMatchDrafter, TLIDrafter, VocabMapping
from .drafters import ModelDrafter, NGramDrafter
from .eagle import EagleDrafter, load_book_head
from .fastpath import PLAIN, choose_path, prepare
from .loaders import load_pair, load_tokenizer
from .profiling import torch_threads
from .prompts import stop_token_ids
from .registry import CROSS_VOCAB_DRAFTERS, get_pair
from .synthetic import synthetic_pair
from .vocabs import TokenCodec

__all__ = ["BenchPair", "load_bench_pair", "load_cross_vocab_pair", "synthetic_pair_name", "parse_synthetic",
           "HF_PEER"]

_SYNTHETIC_PREFIX = "synthetic-eps"


def synthetic_pair_name(eps: float) -> str:
    """The sweep name of the synthetic pair with agreement knob ``eps``, e.g. ``synthetic-eps0.5``."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return f"{_SYNTHETIC_PREFIX}{eps:g}"


def parse_synthetic(name: str) -> float | None:
    """The knob of a synthetic pair name, or None for a registry pair name."""
    if not name.startswith(_SYNTHETIC_PREFIX):
        return None
    try:
        eps = float(name[len(_SYNTHETIC_PREFIX):])
    except ValueError:
        raise ValueError(f"bad synthetic pair name {name!r}; write e.g. 'synthetic-eps0.5'") from None
    if not eps >= 0:
        raise ValueError(f"bad synthetic pair name {name!r}: the knob must be >= 0")
    return eps


def _check_pair_name(name: str) -> None:
    if parse_synthetic(name) is None:
        get_pair(name)


def _drafter_kind(pair: str) -> str:
    """``"model"``, ``"ngram"``, ``"eagle"``, ``"tli"`` or ``"string"`` (synthetic pairs draft
    with a model)."""
    return "model" if parse_synthetic(pair) is not None else get_pair(pair).drafter




@dataclass
class BenchPair:
    """The book's one loaded pair: draft (None for prompt lookup and the head), target, the
    target's tokenizer (None when synthetic), the kind of drafter (``"model"``, ``"ngram"``,
    ``"eagle"``, ``"crossvocab"``) and what that kind needs: the trained head for ``"eagle"``;
    for ``"crossvocab"`` (a draft with its own tokenizer, chapter 8) the two
    :class:`specdec.crossvocab.TokenCodec` and the :class:`~specdec.crossvocab.VocabMapping`
    between them (:func:`load_cross_vocab_pair`).

    ``engine`` is the target on the path our loops run it on (:meth:`use_engine_path`); until
    a path is chosen it is the target as loaded. ``generate()`` always runs ``target``.
    """

    name: str
    draft: torch.nn.Module | None
    target: torch.nn.Module
    tokenizer: object | None
    stop_ids: frozenset = frozenset()
    one_thread: bool = False  # tiny models: one CPU thread is faster (and reproducible)
    engine: torch.nn.Module | None = None
    path: object = None  # the specdec.fastpath.Path of ``engine``
    path_table: object = None  # the measurements it was chosen from
    kind: str = "model"
    head: torch.nn.Module | None = None
    draft_codec: object = None
    target_codec: object = None
    mapping: object = None
    crossvocab: str = "tli"  # a cross-vocabulary pair's method: "tli" or "string"
    draft_tokenizer: object = None  # a cross-vocabulary pair's draft's own tokenizer
    draft_path: object = None  # the path a cross-vocabulary pair's draft runs on (use_engine_path)
    draft_engine: torch.nn.Module | None = None  # that draft on its path (generate() keeps ``draft``)

    def __post_init__(self):
        if self.engine is None:
            self.engine, self.path = self.target, PLAIN

    def use_engine_path(self):
        """Measure the target's paths here (:func:`specdec.fastpath.choose_path`, the model's
        own dtype) and run our loops on the fastest; returns the chosen path. A cross-vocabulary
        pair's draft, a whole model of its own, gets its fastest path the same way. Synthetic pairs
        keep the plain path: their tiny models run on one thread, where packing buys nothing
        worth measuring."""
        if self.synthetic:
            self.engine, self.path = self.target, PLAIN
            return self.path
        with _threads(self.one_thread):
            self.path, self.path_table = choose_path(self.target)
        self.engine = prepare(self.target, self.path)
        if self.kind == "crossvocab":
            # the draft is a whole model of another family: it runs on its own fastest path
            self.draft_path, _ = choose_path(self.draft)
            self.draft_engine = prepare(self.draft, self.draft_path)
        return self.path

    @property
    def synthetic(self) -> bool:
        return self.tokenizer is None

    def drafter(self, crossvocab: str | None = None):
        """A fresh drafter of this pair's kind. For a cross-vocabulary pair ``crossvocab``
        picks the method, by default the pair's own: ``"tli"`` (token-level intersection) or
        ``"string"`` (string matching)."""
        if self.kind == "eagle":
            return EagleDrafter(self.head, name=self.name)
        if self.kind == "crossvocab":
            crossvocab = crossvocab or self.crossvocab
            if crossvocab not in ("tli", "string"):
                raise ValueError(f"crossvocab must be 'tli' or 'string', not {crossvocab!r}")
            cls = TLIDrafter if crossvocab == "tli" else StringMatchDrafter
            return cls(self.draft_engine or self.draft, self.mapping, self.draft_codec, self.target_codec,
                       name=f"{self.name}-{crossvocab}")
        if self.draft is None:
            return NGramDrafter()
        return ModelDrafter(self.draft, name=self.name)

    @property
    def dtype(self) -> str:
        return str(next(self.target.parameters()).dtype).removeprefix("torch.")


def load_bench_pair(name: str, device: str = "cpu") -> BenchPair:
    """Load a registry pair (:func:`specdec.loaders.load_pair`) or a synthetic one by name.

    Raises :class:`specdec.registry.ModelUnavailableError` or
    :class:`specdec.registry.VocabularyMismatchError` as ``load_pair`` does.
    """
    eps = parse_synthetic(name)
    if eps is not None:
        draft, target = synthetic_pair(eps, device=device)
        return BenchPair(name, draft, target, None, frozenset(), one_thread=True)
    kind = get_pair(name).drafter
    if kind in CROSS_VOCAB_DRAFTERS:
        return load_cross_vocab_pair(name, device)
    draft, target, tokenizer = load_pair(name, device=device)
    head = load_book_head(target) if kind == "eagle" else None
    return BenchPair(name, draft, target, tokenizer, frozenset(stop_token_ids(tokenizer, target)), kind=kind,
                     head=head)


def load_cross_vocab_pair(name: str, device: str = "cpu"):
    """Load registry pair ``name`` (e.g. ``"tinyllama_llama3"``, ``"phi3_llama3"``) for
    cross-vocabulary drafting: a :class:`BenchPair` of kind ``"crossvocab"``
    carrying both tokenizers' codecs and the mapping between them; ``pair.drafter("tli")``
    and ``pair.drafter("string")`` build the two drafters (``pair.drafter()`` the registry
    pair's own, for ``smollm2_gemma3_tli`` and ``smollm2_gemma3_string``). Where a model is
    missing it raises :class:`~specdec.registry.ModelUnavailableError` before loading any
    weights."""
    pair = get_pair(name)
    if pair.draft is None:
        raise ValueError(f"pair {name!r} drafts with prompt lookup, which has no vocabulary of its own")
    draft_tok = load_tokenizer(pair.draft)
    target_tok = load_tokenizer(pair.target)
    draft, target, _ = load_pair(name, device=device, allow_vocabulary_mismatch=True)
    draft_codec = TokenCodec(draft_tok, draft.get_output_embeddings().weight.shape[0], name=pair.draft.hub_id)
    target_codec = TokenCodec(target_tok, target.get_output_embeddings().weight.shape[0], name=pair.target.hub_id)
    mapping = VocabMapping.from_codecs(draft_codec, target_codec)
    return BenchPair(name, draft, target, target_tok, frozenset(stop_token_ids(target_tok, target)),
                     kind="crossvocab", draft_codec=draft_codec, target_codec=target_codec, mapping=mapping,
                     crossvocab=pair.drafter if pair.drafter in CROSS_VOCAB_DRAFTERS else "tli",
                     draft_tokenizer=draft_tok)


def _threads(one: bool):
    """One CPU thread inside the block when ``one`` (tiny models) (:func:`specdec.profiling.torch_threads`)."""
    return torch_threads(1 if one else None)
