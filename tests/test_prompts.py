"""The prompt sets: committed files load offline with the expected fields and limits; encoding a
prompt and the tokens that stop a reply."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from specdec.profiles import get_profile
from specdec.prompts import (DOMAINS, MAX_PASSAGE_TOKENS, SUMMARY_INSTRUCTION, cut_to_tokens,
                             encode_prompt, load_all, load_hub_prompts, load_prompts, n_tokens,
                             prompts_dir, smollm2_tokenizer, stop_token_ids)

COMMON_FIELDS = {"id", "domain", "prompt", "source"}
DOMAIN_FIELDS = {
    "code": {"task_id", "entry_point"},
    "conversation": {"category", "question_id"},
    "summarisation": {"passage", "page", "section", "n_passage_tokens"},
}


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_loads_with_fields(domain):
    records = load_prompts(domain)
    assert len(records) >= get_profile("full").n_prompts  # enough for the largest workload
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == COMMON_FIELDS | DOMAIN_FIELDS[domain]
        assert r["domain"] == domain
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        assert r["source"].strip()


@pytest.mark.parametrize("domain", DOMAINS)
def test_n_takes_the_first_prompts(domain):
    everything = load_prompts(domain)
    assert load_prompts(domain, 3) == everything[:3]
    assert load_prompts(domain, len(everything)) == everything


def test_domain_specific_content():
    for r in load_prompts("code"):
        assert f"def {r['entry_point']}(" in r["prompt"]
    for r in load_prompts("summarisation"):
        assert r["prompt"] == f"{SUMMARY_INSTRUCTION}\n\n{r['passage']}"
        assert 0 < r["n_passage_tokens"] <= MAX_PASSAGE_TOKENS
    # categories are interleaved, so a small workload still sees every kind of question
    conversation = load_prompts("conversation")
    n_categories = len({r["category"] for r in conversation})
    assert n_categories > 1
    assert len({r["category"] for r in conversation[:n_categories]}) == n_categories


def test_load_all():
    prompts = load_all(2)
    assert tuple(prompts) == DOMAINS
    assert all(len(records) == 2 and records[0]["domain"] == domain for domain, records in prompts.items())


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="code, conversation, summarisation"):
        load_prompts("poetry")
    available = len(load_prompts("code"))
    with pytest.raises(ValueError, match=f"at most {available}"):
        load_prompts("code", available + 1)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="an integer >= 1"):
            load_prompts("conversation", bad)
    with pytest.raises(ValueError, match="alpaca, cnn_dailymail"):
        load_hub_prompts("squad", 2)


def test_sources_document_every_file():
    sources = (prompts_dir() / "SOURCES.md").read_text()
    for domain in DOMAINS:
        assert f"{domain}.jsonl" in sources


class _WordTokenizer:
    """One token per whitespace-separated word: enough to check where text is cut."""

    def __call__(self, text, add_special_tokens=False):
        class Encoding:
            input_ids = text.split()
        return Encoding()


def test_cut_to_tokens_keeps_whole_paragraphs_then_sentences():
    tok = _WordTokenizer()
    text = "one two three.\n\nfour five six.\n\nseven eight nine."
    assert cut_to_tokens(text, tok, 9) == text
    assert cut_to_tokens(text, tok, 7) == "one two three.\n\nfour five six."
    long_first = "a b c. d e f. g h i.\n\nj k."
    assert cut_to_tokens(long_first, tok, 7) == "a b c. d e f."
    with pytest.raises(ValueError, match="first sentence"):
        cut_to_tokens("a b c d e.", tok, 3)


@pytest.mark.slow  # reads the tokenizer from the packaged GGUF file (a few seconds)
def test_summarisation_passages_fit_the_token_limit():
    tokenizer = smollm2_tokenizer()
    for r in load_prompts("summarisation"):
        count = n_tokens(r["passage"], tokenizer)
        assert count <= MAX_PASSAGE_TOKENS
        assert count == r["n_passage_tokens"]


def test_offline_fresh_cache(tmp_path):
    """Offline, with an empty datasets cache: local domains load, hub data sets fail clearly."""
    script = textwrap.dedent("""
        from specdec.prompts import HubUnavailableError, load_hub_prompts, load_prompts
        assert len(load_prompts("code", 2)) == 2
        try:
            load_hub_prompts("cnn_dailymail", 2)
        except HubUnavailableError as err:
            print("cnn_dailymail:", err)
        else:
            raise SystemExit("cnn_dailymail loaded although the hub is offline")
        load_hub_prompts("alpaca", 2)  # uncaught: the traceback the reader would see
    """)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "cnn_dailymail: the data set 'cnn_dailymail'" in proc.stdout
    assert "offline domains" in proc.stdout
    assert proc.stderr.count("Traceback") == 1  # one error, no chain
    assert "During handling of the above exception" not in proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("specdec.prompts.HubUnavailableError: the data set 'alpaca'")
    assert "load_prompts(domain)" in last_line
    assert (tmp_path / "datasets").is_dir()  # the local file was cached there, not elsewhere


# ------------------------------------------------------------------------------- tokens


def _toy_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    words = ["<unk>", "</s>", "<|im_start|>", "<|im_end|>", "hello", "world", "user", "assistant"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    return tokenizer


class _ModelWithStops:
    generation_config = GenerationConfig(eos_token_id=[1, 7])


def test_stop_token_ids():
    tokenizer = _toy_tokenizer()
    assert stop_token_ids(tokenizer) == {1, 3}  # </s> and <|im_end|>
    assert stop_token_ids(tokenizer, _ModelWithStops()) == {1, 3, 7}


def test_encode_prompt_with_and_without_the_chat_template():
    tokenizer = _toy_tokenizer()
    chat = encode_prompt(tokenizer, "hello world")
    assert chat.dtype == torch.long and chat.dim() == 1
    assert chat.tolist() == [2, 6, 4, 5, 3, 2, 7]  # <|im_start|> user hello world <|im_end|> <|im_start|> assistant
    assert encode_prompt(tokenizer, "hello world", chat=False).tolist() == [4, 5]
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            encode_prompt(tokenizer, empty)
