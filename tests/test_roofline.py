"""specdec.roofline: parameter counts, costs of a decode step, the roofline, measurements."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig

from specdec import microbench as mb
from specdec import roofline as rl
from specdec import steptime as st
from specdec.registry import CONFIG_KEYS, model_config


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
    lambda: mb.measure_matmul_flops(n=0),
    lambda: mb.measure_bandwidth(nbytes=1024, method="scan"),
    lambda: mb.measure_matmul_flops(n=8, summary="max"),
    lambda: rl.model_shape(AutoConfig.for_model("bert")),
])
def test_bad_input_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_not_a_config_is_a_type_error():
    with pytest.raises(TypeError, match="transformers config"):
        rl.param_count({"hidden_size": 64})


def test_measurements_are_positive_and_finite():
    flops = mb.measure_matmul_flops(n=128, repeats=2, warmup=1)
    bw = mb.measure_bandwidth(nbytes=4 * 2**20, repeats=2)
    bw_sum = mb.measure_bandwidth(nbytes=4 * 2**20, repeats=2, method="sum")
    fastest = mb.measure_matmul_flops(n=128, repeats=2, warmup=1, summary="min")
    assert all(math.isfinite(x) and x > 0 for x in (flops, bw, bw_sum, fastest))


def test_forward_timing_keeps_the_context_fixed():
    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(config).eval()
    ms = st.measure_forward_ms(model, n_tokens=2, context=9, repeats=2)
    assert math.isfinite(ms) and ms > 0
    curve = st.verify_cost_curve(model, ks=(2, 4), context=9, repeats=2)
    assert curve.ks == (1, 2, 4) and curve.relative[0] == 1.0
    assert all(math.isfinite(m) and m > 0 for m in curve.ms)
    with pytest.raises(ValueError, match="positions"):
        st.measure_forward_ms(model, n_tokens=8, context=60)


# --------------------------------------------------------------------------- the model's own matrices


def _linear_weight_shapes(config):
    """(in, out) -> count over the matrices a built model multiplies by (meta device, no memory)."""
    from collections import Counter
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    counts = Counter()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            counts[(module.in_features, module.out_features)] += 1
        elif isinstance(module, Conv1D):  # GPT-2 stores [in, out]
            counts[tuple(module.weight.shape)] += 1
    return counts


@pytest.mark.parametrize("config", [tiny_llama(), tiny_llama(head_dim=16, intermediate_size=64), tiny_gpt2()],
                         ids=["llama-gqa", "llama-head_dim", "gpt2"])
def test_linear_shapes_are_the_matrices_of_a_real_build(config):
    shapes = rl.linear_shapes(config)
    assert {(s.in_features, s.out_features): s.per_pass for s in shapes} == _linear_weight_shapes(config)
    assert sum(len(s.names) for s in shapes) == (8 if config.model_type == "llama" else 5)


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_linear_shapes_add_up_to_the_matmul_parameters(key):
    config = model_config(key)
    shapes = rl.linear_shapes(config)
    assert sum(s.per_pass * s.in_features * s.out_features for s in shapes) == rl.matmul_param_count(config)
    assert _linear_weight_shapes(config) == {(s.in_features, s.out_features): s.per_pass for s in shapes}


def test_linear_shapes_of_smollm2_come_from_its_config():
    config = model_config("smollm2-135m")
    d, L = config.hidden_size, config.num_hidden_layers
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    by_names = {s.names: (s.in_features, s.out_features, s.per_pass) for s in rl.linear_shapes(config)}
    assert d == q  # SmolLM2: the q and o projections are square, so they share one shape
    assert by_names == {("q_proj", "o_proj"): (d, q, 2 * L), ("k_proj", "v_proj"): (d, kv, 2 * L),
                        ("gate_proj", "up_proj"): (d, config.intermediate_size, 2 * L),
                        ("down_proj",): (config.intermediate_size, d, L),
                        ("lm_head",): (d, config.vocab_size, 1)}
    # changing the config changes the shapes: nothing is hard-coded
    wider = model_config("smollm2-135m", intermediate_size=2048)
    assert any(s.out_features == 2048 for s in rl.linear_shapes(wider))


def test_linear_shape_flops_and_bytes_are_exact():
    s = rl.LinearShape(("w",), in_features=576, out_features=1536, per_pass=30)
    assert s.flops(9) == 2 * 9 * 576 * 1536 == 15_925_248
    assert s.bytes(9, 4) == (576 * 1536 + 9 * (576 + 1536)) * 4
    assert s.bytes(1, 2) == (576 * 1536 + 576 + 1536) * 2
    assert s.label == "w 576\u21921536"


LINEAR_COLUMNS = ["dtype", "matrices", "in_features", "out_features", "per_pass", "copies", "m", "flops", "bytes",
                  "intensity", "seconds", "seconds_q1", "seconds_q3", "gflops"]


def test_measure_linear_gflops_table():
    config = tiny_llama()
    shapes = rl.linear_shapes(config)
    table = mb.measure_linear_gflops(config, ms=(3, 1), dtypes=(torch.float32, torch.bfloat16), repeats=2,
                                     warmup=0, copies=2)
    assert list(table.columns) == LINEAR_COLUMNS
    assert len(table) == 2 * len(shapes) * 2
    assert set(table["dtype"]) == {"float32", "bfloat16"} and sorted(set(table["m"])) == [1, 3]
    assert (table["copies"] == table["per_pass"].clip(upper=2)).all()
    elem = table["dtype"].map({"float32": 4, "bfloat16": 2})
    i, o, m = table["in_features"], table["out_features"], table["m"]
    assert (table["flops"] == 2 * m * i * o).all()
    assert np.allclose(table["bytes"], (i * o + m * (i + o)) * elem)
    assert np.allclose(table["intensity"], table["flops"] / table["bytes"])
    assert np.isfinite(table["gflops"]).all() and (table["gflops"] > 0).all()
    assert ((table["seconds_q1"] <= table["seconds"]) & (table["seconds"] <= table["seconds_q3"])).all()
    assert np.allclose(table["gflops"], table["flops"] / table["seconds"] / 1e9)
    head = table[table["matrices"].str.startswith("lm_head")]
    assert set(head["out_features"]) == {config.vocab_size} and (head["per_pass"] == 1).all()


def test_measure_linear_gflops_times_with_the_profiling_helpers(monkeypatch):
    """The timing comes from specdec.profiling.time_interleaved; each round runs `copies` products."""
    import specdec.profiling as profiling

    calls = []

    def fake_interleaved(fns, repeats, warmup=1, device="cpu", progress=False):
        calls.append((sorted(fns), repeats, warmup))
        return {m: [1e-3 * m] * repeats for m in fns}  # a round of m rows takes m ms

    monkeypatch.setattr(profiling, "time_interleaved", fake_interleaved)
    config = tiny_llama()
    table = mb.measure_linear_gflops(config, ms=(1, 2, 4), dtypes=(torch.float32,), repeats=3, warmup=1)
    assert calls == [([1, 2, 4], 3, 1)] * len(rl.linear_shapes(config))
    assert (table["copies"] == table["per_pass"]).all()  # copies=None: as many matrices as one pass has
    assert np.allclose(table["seconds"], 1e-3 * table["m"] / table["copies"])
    # "min" takes the fastest round: here every round of m rows takes m ms, except a slow first one
    def slow_first(fns, repeats, warmup=1, device="cpu", progress=False):
        return {m: [5e-3 * m] + [1e-3 * m] * (repeats - 1) for m in fns}

    monkeypatch.setattr(profiling, "time_interleaved", slow_first)
    fastest = mb.measure_linear_gflops(config, ms=(1, 2), dtypes=(torch.float32,), repeats=3,
                                       summary="min")
    assert np.allclose(fastest["seconds"], 1e-3 * fastest["m"] / fastest["copies"])
    assert (fastest["seconds_q3"] > fastest["seconds"]).all()
    passes = mb.pass_matmul_ms(table)
    # per_pass products of copies-per-round time: every m costs m ms per shape and pass
    assert np.allclose(passes["matmul_ms"], passes["m"] * len(rl.linear_shapes(config)))
    assert np.allclose(passes["flops"], 2 * passes["m"] * rl.matmul_param_count(config))
    # at one row a pass's products move every matmul weight once, plus a few activations
    one = passes[passes["m"] == 1].iloc[0]
    assert 4 * rl.matmul_param_count(config) < one["bytes"] < 4.2 * rl.matmul_param_count(config)


def test_pass_matmul_ms_sums_per_pass():
    import pandas as pd

    table = pd.DataFrame({"dtype": ["float32"] * 4, "m": [2, 2, 1, 1], "per_pass": [30, 1, 30, 1],
                          "seconds": [2e-4, 3e-3, 1e-4, 2e-3], "flops": [20.0, 200.0, 10.0, 100.0],
                          "bytes": [5.0, 50.0, 4.0, 40.0]})
    out = mb.pass_matmul_ms(table)
    assert list(out.columns) == ["dtype", "m", "matmul_ms", "flops", "bytes", "intensity", "gflops"]
    assert out["m"].tolist() == [1, 2]
    assert np.allclose(out["matmul_ms"], [30 * 0.1 + 2.0, 30 * 0.2 + 3.0])
    assert np.allclose(out["flops"], [400.0, 800.0]) and np.allclose(out["bytes"], [160.0, 200.0])
    assert np.allclose(out["intensity"], [2.5, 4.0])
    assert np.allclose(out["gflops"], [400 / 5e-3 / 1e9, 800 / 9e-3 / 1e9])
    with pytest.raises(ValueError, match="missing columns"):
        mb.pass_matmul_ms(table.drop(columns="per_pass"))


def test_fit_affine_cost_recovers_a_line():
    fixed, per_token = mb.fit_affine_cost([1, 2, 4, 8, 16], [40 + 3 * n for n in (1, 2, 4, 8, 16)])
    assert fixed == pytest.approx(40) and per_token == pytest.approx(3)
    with pytest.raises(ValueError):
        mb.fit_affine_cost([4, 4], [1.0, 2.0])
    with pytest.raises(ValueError):
        mb.fit_affine_cost([1, 2], [1.0])


@pytest.mark.parametrize("kw", [dict(ms=(0, 1)), dict(ms=()), dict(copies=0), dict(dtypes=(torch.int8,)),
                                dict(repeats=0), dict(summary="mean")])
def test_measure_linear_gflops_bad_input(kw):
    with pytest.raises(ValueError):
        mb.measure_linear_gflops(tiny_llama(), **{"ms": (1,), "repeats": 1, **kw})


def test_measure_pass_breakdown_times_the_pass_and_its_products_in_the_same_rounds(monkeypatch):
    import specdec.profiling as profiling

    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(config).eval()
    seen = {}

    def fake_interleaved(fns, repeats, warmup=1, device="cpu", progress=False):
        seen["names"], seen["repeats"], seen["warmup"] = sorted(fns), repeats, warmup
        for fn in fns.values():  # each callable must run (and keep the cache at its context)
            fn()
        # round r: a pass of k tokens takes 10 + k + r ms, its products 4 + k ms
        return {(what, k): [(10 + k + r if what == "forward" else 4 + k) * 1e-3 for r in range(repeats)]
                for what, k in fns}

    monkeypatch.setattr(profiling, "time_interleaved", fake_interleaved)
    table = mb.measure_pass_breakdown(model, ks=(4, 2), context=9, repeats=3, warmup=0)
    assert seen["names"] == sorted((w, k) for w in ("forward", "products") for k in (1, 2, 4))
    assert (seen["repeats"], seen["warmup"]) == (3, 0)
    assert list(table.columns) == ["k", "forward_ms", "products_ms", "rest_ms", "relative"]
    assert table["k"].tolist() == [1, 2, 4]
    assert np.allclose(table["forward_ms"], [12, 13, 15]) and np.allclose(table["products_ms"], [5, 6, 8])
    assert np.allclose(table["rest_ms"], 7) and np.allclose(table["relative"], [1, 13 / 12, 15 / 12])
    fastest = mb.measure_pass_breakdown(model, ks=(4, 2), context=9, repeats=3, warmup=0, summary="min")
    assert np.allclose(fastest["forward_ms"], [11, 12, 14]) and np.allclose(fastest["rest_ms"], 6)
    with pytest.raises(ValueError, match="summary"):
        mb.measure_pass_breakdown(model, ks=(2,), context=9, summary="mean")


def test_measure_pass_breakdown_on_a_real_model():
    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(config).eval()
    table = mb.measure_pass_breakdown(model, ks=(3,), context=9, repeats=2)
    assert table["k"].tolist() == [1, 3] and table["relative"].iloc[0] == 1.0
    assert np.isfinite(table[["forward_ms", "products_ms", "rest_ms"]].to_numpy()).all()
    assert (table["forward_ms"] > 0).all() and (table["products_ms"] > 0).all()
    with pytest.raises(ValueError, match="positions"):
        mb.measure_pass_breakdown(model, ks=(8,), context=60)

    with pytest.raises(TypeError):
        mb.measure_pass_breakdown(config)


def test_measure_pass_breakdown_counts_gpt2_conv1d_projections(monkeypatch):
    import specdec.profiling as profiling

    config = tiny_gpt2()
    gpt2 = AutoModelForCausalLM.from_config(config).eval()
    calls = []
    real_addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: calls.append(1) or real_addmm(*a, **kw))

    def run_products_once(fns, repeats, warmup=1, device="cpu", progress=False):
        calls.clear()
        fns[("products", 1)]()
        return {name: [1e-3] * repeats for name in fns}

    monkeypatch.setattr(profiling, "time_interleaved", run_products_once)
    mb.measure_pass_breakdown(gpt2, ks=(1,), context=5, repeats=1)
    assert len(calls) == 4 * config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer


def test_peaks_summarise_the_rounds_by_median_or_fastest(monkeypatch):
    monkeypatch.setattr(mb, "time_repeated", lambda fn, repeats, warmup, device: [3.0, 1.0, 2.0])
    assert mb.measure_matmul_flops(n=4, repeats=3) == 2 * 4**3 / 2.0
    assert mb.measure_matmul_flops(n=4, repeats=3, summary="min") == 2 * 4**3 / 1.0
    assert mb.measure_bandwidth(nbytes=4096, repeats=3, method="sum", summary="min") == 4096 / 1.0
