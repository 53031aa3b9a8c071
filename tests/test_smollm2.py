"""Greedy identity on the real, offline SmolLM2-135M-Instruct for every offline drafter and K."""

import re

import pytest
import torch

from specdec.decoding import autoregressive_generate, speculative_generate
from specdec.drafters import ModelDrafter, NGramDrafter
from specdec.loaders import load_smollm2
from specdec.prompts import encode_prompt, load_prompts, stop_token_ids
from specdec.quant import quantized_copy
from specdec.registry import SMOLLM2_EARLY_LAYERS
from specdec.synthetic import first_layers_copy

pytestmark = pytest.mark.slow
N_NEW = 20


@pytest.fixture(scope="module")
def smol():
    model, tok = load_smollm2()
    return model, tok, stop_token_ids(tok, model)


@pytest.fixture(scope="module")
def cases(smol):
    """Two real prompts (code, summarisation) and the target's own greedy continuation of each."""
    model, tok, stops = smol
    out = []
    for domain in ("code", "summarisation"):
        ids = encode_prompt(tok, load_prompts(domain, 1)[0]["prompt"])
        ours = autoregressive_generate(model, ids, N_NEW, stop_ids=stops).tokens
        with torch.inference_mode():
            hf = model.generate(ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=N_NEW,
                                do_sample=False, eos_token_id=sorted(stops))[0, len(ids):].tolist()
        assert ours == hf, f"{domain}: the autoregressive loop differs from HF generate()"
        out.append((ids, ours))
    return out


@pytest.fixture(scope="module")
def drafters(smol):
    model = smol[0]
    return {
        "ngram": NGramDrafter(),
        "early": ModelDrafter(first_layers_copy(model, SMOLLM2_EARLY_LAYERS), name="early"),
        "nf4": ModelDrafter(quantized_copy(model, "nf4"), name="nf4"),
    }


@pytest.mark.parametrize("name", ["ngram", "early", "nf4"])
def test_greedy_speculative_equals_target_on_smollm2(smol, cases, drafters, name):
    model, _, stops = smol
    for ids, reference in cases:
        for k in (1, 2, 4, 8):
            out = speculative_generate(model, drafters[name], ids, N_NEW, k, stop_ids=stops)
            assert out.tokens == reference, f"drafter {name}, K={k}"


def test_python_m_specdec_reports_a_match(capsys):
    from specdec.__main__ import main

    assert main(["--max-new-tokens", "12", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "acceptance rate" in out and "matches plain greedy decoding token for token: yes" in out
    line = next(s for s in out.splitlines() if s.startswith("speedup:"))
    m = re.match(r"speedup: ([0-9.]+)x decode-only \(after the first token\), ([0-9.]+)x end to end", line)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, line
