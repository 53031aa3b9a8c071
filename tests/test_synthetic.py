"""Tests of specdec.synthetic: random-weight models, first-layers drafts, synthetic pairs and
their calibrated acceptance. Everything here runs offline, without weights."""

import pytest
import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from specdec.sampling import GREEDY, SamplingParams
from specdec.synthetic import (
    calibrate_synthetic,
    first_layers_copy,
    measure_acceptance,
    random_model,
    synthetic_pair,
)

from .helpers import tiny_llama

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


def test_first_layers_copy_is_the_early_exit_of_the_model():
    model = tiny_llama(n_layers=4)
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
