"""Tests of specdec.registry: architecture configs, the pair registry, the vocabulary check."""

import pytest

from specdec.loaders import describe, load_pair
from specdec.registry import (
    PAIRS,
    ModelSpec,
    VocabularyMismatchError,
    check_same_vocabulary,
    get_pair,
    model_config,
    require_shared_vocabulary,
)

# ---------------------------------------------------------------------------------- configs

VOCAB = {
    "gpt2": 50257,
    "gpt2-xl": 50257,
    "tinyllama-1.1b": 32000,
    "phi-3-mini": 32064,
    "llama-3-8b": 128256,
    "smollm2-135m": 49152,
    "gemma-3-270m": 262144,
}


@pytest.mark.parametrize("key", sorted(VOCAB))
def test_config_loads_with_its_vocabulary(key):
    config = model_config(key)
    assert config.vocab_size == VOCAB[key]
    assert config.num_hidden_layers > 0


def test_config_shapes_of_the_seed_models():
    llama = model_config("llama-3-8b")
    assert (llama.num_attention_heads, llama.num_key_value_heads) == (32, 8)  # GQA: 4 query heads per KV head
    assert (llama.hidden_size, llama.intermediate_size, llama.num_hidden_layers) == (4096, 14336, 32)
    assert llama.rope_parameters["rope_theta"] == 500000.0
    assert (model_config("gpt2-xl").n_layer, model_config("gpt2-xl").n_embd) == (48, 1600)
    tiny = model_config("tinyllama-1.1b")
    assert (tiny.num_attention_heads, tiny.num_key_value_heads, tiny.num_hidden_layers) == (32, 4, 22)
    phi = model_config("phi-3-mini")
    assert type(phi).__name__ == "Phi3Config" and phi.num_key_value_heads == 32


def test_config_overrides_and_unknown_key():
    assert model_config("gpt2", n_layer=2).num_hidden_layers == 2
    with pytest.raises(ValueError, match="unknown model config 'gpt-5'.*llama-3-8b"):
        model_config("gpt-5")


# --------------------------------------------------------------------------------- registry


def test_registry_pairs_and_vocabularies():
    assert {"gpt2_dev", "tinyllama_llama3", "phi3_llama3", "llama3_self", "smollm2_ngram", "smollm2_nf4", "smollm2_early"} <= set(PAIRS)
    for pair in PAIRS.values():
        if pair.draft is not None:
            assert pair.draft.vocab_size == VOCAB[pair.draft.config_key]
        assert pair.target.vocab_size == VOCAB[pair.target.config_key]
    assert get_pair("gpt2_dev").shares_vocabulary
    assert get_pair("llama3_self").draft.quantization == "nf4" and get_pair("llama3_self").target.quantization is None
    assert get_pair("smollm2_ngram").draft is None and get_pair("smollm2_ngram").shares_vocabulary
    assert not get_pair("tinyllama_llama3").shares_vocabulary
    assert not get_pair("phi3_llama3").shares_vocabulary


def test_unknown_pair_names_itself_and_the_known_ones():
    with pytest.raises(ValueError) as info:
        get_pair("gpt4_llama")
    message = str(info.value)
    assert "gpt4_llama" in message
    assert all(name in message for name in PAIRS)


def test_mismatched_vocabulary_is_refused_naming_both_models():
    pair = get_pair("tinyllama_llama3")
    with pytest.raises(VocabularyMismatchError) as info:
        check_same_vocabulary(pair)
    message = str(info.value)
    for part in ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "meta-llama/Meta-Llama-3-8B-Instruct", "32,000", "128,256", "shared vocabulary"):
        assert part in message
    assert isinstance(info.value, ValueError)
    # load_pair refuses before it tries to load anything
    with pytest.raises(VocabularyMismatchError):
        load_pair("phi3_llama3")
    require_shared_vocabulary(50257, 50257)  # the same size passes
    with pytest.raises(VocabularyMismatchError, match="draft a.*target b"):
        require_shared_vocabulary(10, 11, ("a", "b"))


def test_model_spec_validates_its_fields():
    with pytest.raises(ValueError, match="quantization"):
        ModelSpec("x", "org/x", 10, "gpt2", quantization="int4")
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec("x", "org/x", 10, "gpt2", dtype="float17")


def test_describe_lists_every_pair():
    table = describe()
    assert set(PAIRS) <= set(table.index)
    assert not table.loc["tinyllama_llama3", "shared vocab"]
    assert table.loc["llama3_self", "target vocab"] == 128256
    assert table.loc["smollm2_ngram", "draft offline"]
