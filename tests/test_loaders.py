"""Tests of specdec.loaders: one clear error for missing weights, and (marked ``slow``) the real
SmolLM2-135M-Instruct loaded offline. The packaged models' own tests are in test_packaged.py."""

import traceback

import pytest
import torch

from specdec import loaders
from specdec.loaders import load_hf, load_pair
from specdec.prompts import encode_prompt, stop_token_ids
from specdec.registry import MODELS, SMOLLM2_EARLY_LAYERS, ModelUnavailableError, model_config

# ----------------------------------------------------------------------- unavailable models


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever the environment says."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))


def test_missing_hub_weights_raise_one_clear_error(hub_offline):
    with pytest.raises(ModelUnavailableError) as info:
        load_hf(MODELS["llama-3-8b"])
    err = info.value
    message = str(err)
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in message
    assert "huggingface-cli login" in message and "HF_HUB_OFFLINE" in message
    # no chained hub traceback
    assert err.__cause__ is None and err.__suppress_context__
    shown = "".join(traceback.format_exception(err))
    assert "During handling" not in shown and "direct cause" not in shown

    with pytest.raises(ModelUnavailableError, match="openai-community/gpt2-xl") as info:
        load_pair("gpt2_dev")
    assert "huggingface-cli login" not in str(info.value)  # GPT-2 is not gated
    assert not loaders.is_available_offline(MODELS["gpt2"])


# ------------------------------------------------------------------- the real offline model


@pytest.fixture(scope="module")
def smollm2():
    return loaders.load_smollm2()


@pytest.mark.slow
def test_smollm2_loads_offline_matches_its_config_and_generates(smollm2, hub_offline):
    model, tokenizer = smollm2
    ours, theirs = model_config("smollm2-135m"), model.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.rope_parameters["rope_theta"] == theirs.rope_parameters["rope_theta"]

    ids = encode_prompt(tokenizer, "What is the capital of France?")
    assert tokenizer.decode(ids).startswith("<|im_start|>system")
    stops = stop_token_ids(tokenizer, model)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    out = model.generate(ids[None], attention_mask=torch.ones_like(ids[None]), max_new_tokens=6, do_sample=False)
    reply = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in reply, reply


@pytest.mark.slow
def test_load_pair_smollm2_early_gives_a_shallow_draft():
    draft, target, tokenizer = load_pair("smollm2_early")
    assert draft.config.num_hidden_layers == SMOLLM2_EARLY_LAYERS and target.config.num_hidden_layers == 30
    ids = encode_prompt(tokenizer, "Name a colour.")[None]
    with torch.no_grad():
        q, p = draft(ids).logits, target(ids).logits
    assert q.shape == p.shape == (1, ids.shape[1], 49152) and torch.isfinite(q).all()
    assert not torch.allclose(q, p)
