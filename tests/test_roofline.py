"""specdec.roofline: parameter counts, costs of a decode step, the roofline, measurements."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig

from specdec import roofline as rl
from specdec.models import CONFIG_KEYS, model_config


def tiny_gpt2(**kw):
    fields = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=101, n_positions=32, bos_token_id=0, eos_token_id=0)
    fields.update(kw)
    return GPT2Config(**fields)


def tiny_llama(**kw):
    fields = dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=2,
                  num_hidden_layers=3, vocab_size=103, max_position_embeddings=64, bos_token_id=0,
                  eos_token_id=0, pad_token_id=0)
    fields.update(kw)
    return LlamaConfig(**fields)


def built_params(config) -> int:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", [
    tiny_gpt2(),
    tiny_gpt2(n_inner=80, tie_word_embeddings=False),
    tiny_llama(),
    tiny_llama(tie_word_embeddings=True),
    tiny_llama(attention_bias=True, mlp_bias=True, head_dim=16),
], ids=["gpt2", "gpt2-untied-n_inner", "llama-gqa", "llama-gqa-tied", "llama-biases-head_dim"])
def test_param_count_matches_a_real_build(config):
    assert rl.param_count(config) == built_params(config)


@pytest.mark.parametrize("model_type", ["phi3", "mistral", "qwen2"])
def test_param_count_other_llama_family_layouts(model_type):
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=100,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    assert rl.param_count(config) == built_params(config)


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_param_count_of_the_book_models(key):
    config = model_config(key)
    with torch.device("meta"):  # full size, no memory
        model = AutoModelForCausalLM.from_config(config)
    assert rl.param_count(config) == sum(p.numel() for p in model.parameters())


def test_param_count_accepts_a_model():
    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(config)
    assert rl.param_count(model) == rl.param_count(config)


def test_gpt2_small_is_124m_and_llama3_8b_is_8b():
    assert rl.param_count(model_config("gpt2")) == 124_439_808
    assert 8.0e9 < rl.param_count(model_config("llama-3-8b")) < 8.1e9


def test_kv_bytes_per_token_is_gqa_aware():
    assert rl.kv_bytes_per_token(model_config("llama-3-8b"), 2) == 2 * 32 * 8 * 128 * 2 == 131072
    # without GQA (gpt2: every head has its own K and V) it is 2 * layers * d_model * bytes
    assert rl.kv_bytes_per_token(model_config("gpt2"), 2) == 2 * 12 * 768 * 2
    assert rl.kv_bytes_per_token(tiny_llama(), 4) == 2 * 3 * 2 * 8 * 4


def test_kv_bytes_per_token_matches_a_real_cache():
    from transformers import DynamicCache
    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(config).eval()
    cache = DynamicCache(config=config)
    n = 7
    with torch.inference_mode():
        model(input_ids=torch.arange(n)[None], past_key_values=cache, use_cache=True)
    stored = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert stored == n * rl.kv_bytes_per_token(config, 4)


def test_decode_step_flops_are_two_per_matmul_weight_plus_attention():
    config = tiny_llama()
    s = rl.model_shape(config)
    matmul = s.layers * (64 * 64 + 2 * 64 * 16 + 64 * 64 + 3 * 64 * 96) + 103 * 64
    assert rl.matmul_param_count(config) == matmul
    cost = rl.decode_step_cost(config, n_tokens=3, context=10)
    assert cost.matmul_flops == 2 * matmul * 3
    # queries at positions 11, 12, 13 attend to 11 + 12 + 13 keys
    assert cost.attention_flops == 4 * 3 * 8 * 8 * (11 + 12 + 13)
    assert cost.flops == cost.matmul_flops + cost.attention_flops


def test_decode_step_bytes():
    config = tiny_llama()  # untied: the input embedding contributes only the rows looked up
    cost = rl.decode_step_cost(config, n_tokens=2, context=5, bytes_per_param=4, kv_bytes=2)
    weights = rl.param_count(config) - (103 - 2) * 64
    assert cost.weight_bytes == 4 * weights
    per_token = rl.kv_bytes_per_token(config, 2)
    assert cost.kv_read_bytes == 7 * per_token and cost.kv_write_bytes == 2 * per_token
    assert cost.bytes == cost.weight_bytes + cost.kv_read_bytes + cost.kv_write_bytes
    # tied (gpt2): the LM head reads the whole table; only the position table is gathered
    g = model_config("gpt2")
    assert rl.decode_step_cost(g, 1, bytes_per_param=2).weight_bytes == 2 * (rl.param_count(g) - 1023 * 768)


def test_intensity_grows_like_n_tokens_when_small():
    config = model_config("llama-3-8b")
    i1 = rl.decode_step_cost(config, 1, context=0).intensity
    assert i1 == pytest.approx(1.0, rel=0.05)  # 2 FLOPs per 2-byte weight
    for n in (2, 4, 8, 16):
        assert rl.decode_step_cost(config, n, context=0).intensity == pytest.approx(n * i1, rel=0.02)
    # in fp32 every byte carries half as many FLOPs
    assert rl.decode_step_cost(config, 1, bytes_per_param=4).intensity == pytest.approx(i1 / 2, rel=0.05)
    # attention does 4 * heads * head_dim FLOPs per cached token, which holds 2 * kv_heads * head_dim
    # elements: with GQA (32 query heads share 8 KV heads) a long context pushes the intensity
    # towards 2 * 32 / (8 * 2) = 4 FLOP/byte; without GQA (Phi-3-mini) it stays at 1
    assert rl.decode_step_cost(config, 1, context=8192).intensity > 1.1 * i1
    assert rl.decode_step_cost(config, 1, context=10**8).intensity == pytest.approx(4.0, rel=0.01)
    phi3 = model_config("phi-3-mini")
    assert rl.decode_step_cost(phi3, 1, context=10**8).intensity == pytest.approx(1.0, rel=0.01)


def test_min_ms_per_token_is_bytes_over_bandwidth():
    config = model_config("llama-3-8b")
    bound = rl.min_ms_per_token(config, 3.35e12, context=0)
    assert bound == pytest.approx(rl.decode_step_cost(config, 1).bytes / 3.35e12 * 1e3)
    assert 4.4 < bound < 4.6  # about 15 GB of fp16 weights over 3.35 TB/s


def test_ridge_point_and_roofline():
    assert rl.ridge_point(989.5e12, 3.35e12) == pytest.approx(295.37, rel=1e-3)
    assert rl.attainable_flops(1.0, 100.0, 10.0) == 10.0
    assert rl.attainable_flops(50.0, 100.0, 10.0) == 100.0
    np.testing.assert_allclose(rl.attainable_flops(np.array([1.0, 10.0, 100.0]), 100.0, 10.0), [10, 100, 100])


def test_crossover_tokens_is_where_intensity_reaches_the_ridge():
    config = model_config("llama-3-8b")
    peak, bw = 989.5e12, 3.35e12
    n = rl.crossover_tokens(config, peak, bw)
    ridge = rl.ridge_point(peak, bw)
    assert rl.decode_step_cost(config, n).intensity >= ridge > rl.decode_step_cost(config, n - 1).intensity
    assert 250 < n < 320
    # below the crossover the roofline time barely grows; beyond it, it grows like n
    t1 = rl.roofline_ms(config, 1, peak, bw)
    assert rl.roofline_ms(config, 8, peak, bw) < 1.05 * t1
    assert rl.roofline_ms(config, 4 * n, peak, bw) > 3.5 * t1


def test_load_hardware():
    gpus = rl.load_hardware()
    h100 = gpus["h100-sxm"]
    assert h100.peak_flops == pytest.approx(989.5e12) and h100.bandwidth == pytest.approx(3.35e12)
    assert gpus["a100-80gb-sxm"].peak_flops == pytest.approx(312e12)
    assert gpus["a100-80gb-sxm"].bandwidth == pytest.approx(2.039e12)
    for g in gpus.values():
        assert g.source_url.startswith("https://") and g.source_title
        assert 10 < g.ridge_point < 1000


@pytest.mark.parametrize("call", [
    lambda: rl.decode_step_cost(tiny_llama(), n_tokens=0),
    lambda: rl.decode_step_cost(tiny_llama(), n_tokens=1.5),
    lambda: rl.decode_step_cost(tiny_llama(), context=-1),
    lambda: rl.decode_step_cost(tiny_llama(), bytes_per_param=0),
    lambda: rl.kv_bytes_per_token(tiny_llama(), -2),
    lambda: rl.ridge_point(0, 1e9),
    lambda: rl.ridge_point(1e12, float("inf")),
    lambda: rl.attainable_flops(-1.0, 1e12, 1e9),
    lambda: rl.min_ms_per_token(tiny_llama(), 0),
    lambda: rl.measure_matmul_flops(n=0),
    lambda: rl.measure_bandwidth(nbytes=1024, method="scan"),
    lambda: rl.model_shape(AutoConfig.for_model("bert")),
])
def test_bad_input_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_not_a_config_is_a_type_error():
    with pytest.raises(TypeError, match="transformers config"):
        rl.param_count({"hidden_size": 64})


def test_measurements_are_positive_and_finite():
    flops = rl.measure_matmul_flops(n=128, repeats=2, warmup=1)
    bw = rl.measure_bandwidth(nbytes=4 * 2**20, repeats=2)
    bw_sum = rl.measure_bandwidth(nbytes=4 * 2**20, repeats=2, method="sum")
    assert all(math.isfinite(x) and x > 0 for x in (flops, bw, bw_sum))


def test_forward_timing_keeps_the_context_fixed():
    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(config).eval()
    ms = rl.measure_forward_ms(model, n_tokens=2, context=9, repeats=2)
    assert math.isfinite(ms) and ms > 0
    curve = rl.verify_cost_curve(model, ks=(2, 4), context=9, repeats=2)
    assert curve.ks == (1, 2, 4) and curve.relative[0] == 1.0
    assert all(math.isfinite(m) and m > 0 for m in curve.ms)
    with pytest.raises(ValueError, match="positions"):
        rl.measure_forward_ms(model, n_tokens=8, context=60)
