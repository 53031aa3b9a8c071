"""The prompt sets: three domains that ship with the book, and two hub data sets.

The three offline domains live in ``data/prompts/<domain>.jsonl`` (made by
``scripts/build_prompts.py`` from packaged, permissively licensed sources; see
``data/prompts/SOURCES.md``) and are loaded with the ``datasets`` library:

* ``code``          -- HumanEval function signatures with their docstrings;
* ``conversation``  -- the first turn of the MT-bench questions (with their category);
* ``summarisation`` -- prose passages from the Python 3.11 tutorial and HOWTOs,
  each at most :data:`MAX_PASSAGE_TOKENS` SmolLM2 tokens, after an instruction.

Every record has the fields ``id``, ``domain``, ``prompt`` and ``source``; each domain
adds its own (``task_id``/``entry_point``, ``category``/``question_id``,
``passage``/``page``/``section``/``n_passage_tokens``).  The files are ordered so that
the first few prompts of a domain already cover several categories or pages: asking
for ``n`` prompts returns the first ``n``.

Loading the local files never contacts a hub (the ``json`` builder ships with
``datasets``); it works with ``HF_DATASETS_OFFLINE=1``.  ``datasets`` keeps an Arrow copy
in its cache (``$HF_DATASETS_CACHE``, by default ``~/.cache/huggingface/datasets``),
keyed on the file's path and modification time, so a regenerated file is re-read.

:func:`load_hub_prompts` loads two larger hub data sets for readers with internet
access; without it, it raises :class:`HubUnavailableError`.

A prompt reaches a model through :func:`encode_prompt` (one user turn in the tokenizer's chat
template, then the assistant's generation prompt), and a reply ends at one of
:func:`stop_token_ids` (EOS and the chat end-of-turn tokens).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .checks import require_int

if TYPE_CHECKING:
    import torch

__all__ = [
    "DOMAINS",
    "HUB_DATASETS",
    "MAX_PASSAGE_TOKENS",
    "SUMMARY_INSTRUCTION",
    "CODE_INSTRUCTION",
    "HubUnavailableError",
    "prompts_dir",
    "prompt_file",
    "load_prompts",
    "load_all",
    "load_hub_prompts",
    "smollm2_tokenizer",
    "n_tokens",
    "cut_to_tokens",
    "encode_prompt",
    "stop_token_ids",
]

DOMAINS = ("code", "conversation", "summarisation")
HUB_DATASETS = ("alpaca", "cnn_dailymail")

#: Upper bound on the length of a summarisation passage, in SmolLM2 tokens.
MAX_PASSAGE_TOKENS = 512
SUMMARY_INSTRUCTION = "Summarise the following passage in three sentences:"
CODE_INSTRUCTION = "Complete the following Python function."

class HubUnavailableError(ConnectionError):
    """A data set needs the Hugging Face hub, and the hub cannot be reached."""


def prompts_dir() -> Path:
    """The folder holding the committed prompt files (``data/prompts``)."""
    from .provenance import repo_root

    return repo_root() / "data" / "prompts"


def prompt_file(domain: str) -> Path:
    """The JSON-lines file of ``domain``."""
    _check_domain(domain)
    return prompts_dir() / f"{domain}.jsonl"


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown prompt domain {domain!r}; choose one of {', '.join(DOMAINS)}")


def _check_n(n) -> None:
    if n is not None:
        require_int("n (prompts; None for all of them)", n, 1)


def load_prompts(domain: str, n: int | None = None) -> list[dict]:
    """The first ``n`` prompts of ``domain`` (all of them if ``n`` is None), as dicts.

    Raises ``ValueError`` for an unknown domain, and when ``n`` is larger than the number
    of prompts the domain has (it does not clip silently).
    """
    _check_domain(domain)
    _check_n(n)
    path = prompt_file(domain)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `make prompts`")

    import datasets

    # A first load shows a progress bar, a cached one does not: keep notebook output stable.
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if n is not None:
        if n > len(ds):
            raise ValueError(f"domain {domain!r} has {len(ds)} prompts, {n} were asked for; "
                             f"ask for at most {len(ds)}")
        ds = ds.select(range(n))
    return ds.to_list()


def load_all(n_per_domain: int | None = None) -> dict[str, list[dict]]:
    """``{domain: load_prompts(domain, n_per_domain)}`` for every domain in :data:`DOMAINS`."""
    _check_n(n_per_domain)
    return {domain: load_prompts(domain, n_per_domain) for domain in DOMAINS}


@lru_cache(maxsize=1)
def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (the offline model's), which counts passage tokens."""
    from .loaders import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


def n_tokens(text: str, tokenizer) -> int:
    """Number of tokens of ``text`` (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def cut_to_tokens(text: str, tokenizer, max_tokens: int = MAX_PASSAGE_TOKENS) -> str:
    """``text`` cut to at most ``max_tokens`` tokens at a paragraph, else a sentence, boundary.

    Whole paragraphs (separated by blank lines) are kept while they fit; if the first one
    does not, whole sentences of it. Raises ``ValueError`` if not even one sentence fits.
    """
    if n_tokens(text, tokenizer) <= max_tokens:
        return text
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    kept = []
    for paragraph in paragraphs:
        if n_tokens("\n\n".join(kept + [paragraph]), tokenizer) > max_tokens:
            break
        kept.append(paragraph)
    if kept:
        return "\n\n".join(kept)
    sentences = _SENTENCE_END.split(paragraphs[0])
    for end in range(len(sentences), 0, -1):
        candidate = " ".join(sentences[:end])
        if n_tokens(candidate, tokenizer) <= max_tokens:
            return candidate
    raise ValueError(f"the first sentence alone is longer than {max_tokens} tokens")


def load_hub_prompts(name: str, n: int) -> list[dict]:
    """``n`` prompts from a hub data set: ``"alpaca"`` (tatsu-lab/alpaca, instructions) or
    ``"cnn_dailymail"`` (abisee/cnn_dailymail 3.0.0 test split, news articles to summarise,
    cut to :data:`MAX_PASSAGE_TOKENS` tokens).

    Needs internet access to the Hugging Face hub (or a copy in the ``datasets`` cache);
    otherwise raises :class:`HubUnavailableError` -- use :func:`load_prompts` instead.
    """
    if name not in HUB_DATASETS:
        raise ValueError(f"unknown hub data set {name!r}; choose one of {', '.join(HUB_DATASETS)}")
    require_int("n", n, 1)

    import datasets

    repo, config, split = {
        "alpaca": ("tatsu-lab/alpaca", None, "train"),
        "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "test"),
    }[name]
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except OSError as err:  # ConnectionError included: offline mode, no network, hub unreachable
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise HubUnavailableError(
            f"the data set {name!r} ({repo}) must be downloaded from the Hugging Face hub, "
            f"which cannot be reached here ({reason}). Without internet access use the "
            f"offline domains instead: load_prompts(domain) with domain in {DOMAINS}."
        ) from None
    if n > len(ds):
        raise ValueError(f"{repo} has {len(ds)} rows, {n} were asked for")
    ds = ds.select(range(n))

    if name == "alpaca":
        return [
            {"id": f"alpaca/{i}", "domain": "instruction", "source": repo,
             "prompt": row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")}
            for i, row in enumerate(ds)
        ]
    tokenizer = smollm2_tokenizer()
    records = []
    for row in ds:
        passage = cut_to_tokens(row["article"], tokenizer)
        records.append({"id": f"cnn_dailymail/{row['id']}", "domain": "summarisation",
                        "source": f"{repo} {config}", "passage": passage,
                        "prompt": f"{SUMMARY_INSTRUCTION}\n\n{passage}"})
    return records


# --------------------------------------------------------------------------------------------
# Tokens: how to encode a prompt, and when a reply stops
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
