"""The sanitising rules for nbval (tests/nbval_sanitize.cfg) hide what varies between runs and
nothing that a checked cell is meant to pin down."""

import re
from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns

RULES = get_sanitize_patterns((Path(__file__).parent / "nbval_sanitize.cfg").read_text())


def sanitize(text: str) -> str:
    for regex, replacement in dict(RULES).items():  # nbval keeps them in an ordered dict
        text = re.sub(regex, replacement, text)
    return text


def test_every_rule_is_read():
    assert len(RULES) == 7


@pytest.mark.parametrize(("first", "second"), [
    (" 20%|##        | 2/10 [00:01<00:04,  1.99it/s]", "100%|##########| 10/10 [00:03<00:00,  3.10it/s]"),
    ("Wall time: 1.23 s", "Wall time: 870 ms"),
    ("verify: 3.2e-05 s, draft: 812 µs", "verify: 4.1e-05 s, draft: 90 ns"),
    ("decode at 12.3 tokens/s", "decode at 9 tokens/s"),
    ("<specdec.cache.CachedLM object at 0x7f3a2c1b9e50>", "<specdec.cache.CachedLM object at 0x55d0c1a2b3c4>"),
    ("saved 2026-11-27 00:16:42.123", "saved 2027-01-02T09:08:07"),
    ("/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning",
     "/home/reader/book/.venv/lib/python3.12/site-packages/tqdm/auto.py:23: TqdmWarning"),
    ("7.395011805507811", "7.395011805507812"),
    ("0.998944295735647", "0.9989442957356473"),
])
def test_what_varies_between_runs_compares_equal(first, second):
    assert first != second
    assert sanitize(first) == sanitize(second)


@pytest.mark.parametrize(("first", "second"), [
    ("accepted 3 of 4 draft tokens", "accepted 2 of 4 draft tokens"),
    ("KV cache: 131072 bytes per token", "KV cache: 262144 bytes per token"),
    ("total variation 0.0000 (K=4)", "total variation 0.0312 (K=4)"),
    ("acceptance ratio 1/2", "acceptance ratio 1/3"),
    ("vocabulary of 50257 tokens", "vocabulary of 32000 tokens"),
    ("greedy output identical: True", "greedy output identical: False"),
    ("0.32172326823189873", "0.32172336823189873"),
    ("speedup 2.1234567", "speedup 2.1234568"),
])
def test_results_stay_visible(first, second):
    assert sanitize(first) != sanitize(second)
