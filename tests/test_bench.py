"""The benchmark harness: configs, sweeps that resume, provenance, skipped pairs, the command
line, and the GPU cost script in its tiny CPU mode. Timings are never asserted. (Reading the
results it writes is tested in test_analysis.py.)"""

import hashlib
import json
import math
from pathlib import Path

import pytest

from specdec import analysis, bench, provenance
from specdec.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# BenchmarkConfig
# ---------------------------------------------------------------------------------------------


def test_config_hash_is_stable_and_sensitive():
    cfg = bench.BenchmarkConfig(pair="gpt2_dev", method="speculative", k=4, domain="code", prompt_id="code/0",
                                max_new_tokens=64)
    # the hash is the SHA-256 of the sorted JSON of the fields: the same in every process and version
    blob = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    assert cfg.config_hash == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert cfg.config_hash == "ac078f75ff2ce258"  # pinned: a change would orphan every results file
    same = bench.BenchmarkConfig(**dict(reversed(list(cfg.to_dict().items()))))
    assert same.config_hash == cfg.config_hash
    assert bench.BenchmarkConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).config_hash == cfg.config_hash
    changed = {"k": 2, "temperature": 1.0, "seed": 1, "prompt_id": "code/1", "max_new_tokens": 32, "device": "cuda"}
    hashes = {bench.BenchmarkConfig(**{**cfg.to_dict(), f: v}).config_hash for f, v in changed.items()}
    assert len(hashes) == len(changed) and cfg.config_hash not in hashes


@pytest.mark.parametrize("bad", [dict(method="beam"), dict(method="autoregressive", k=4), dict(k=0),
                                 dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0),
                                 dict(dtype="float99")])
def test_config_rejects_bad_input(bad):
    fields = dict(pair="p", method="speculative", k=2, domain="code", prompt_id="code/0", max_new_tokens=8)
    with pytest.raises(ValueError):
        bench.BenchmarkConfig(**{**fields, **bad})


def test_plan_for_profile_and_bad_plans():
    plan = bench.plan_for_profile("ci")
    assert plan.profile == "ci" and plan.n_prompts >= 1 and plan.ks
    assert bench.plan_for_profile("ci", ks=(1, 2, 4, 8)).ks == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="unknown pair"):
        bench.plan_for_profile("ci", pairs=("no_such_pair",))
    with pytest.raises(ValueError, match="domain"):
        bench.plan_for_profile("ci", domains=("poetry",))
    with pytest.raises(ValueError, match="ks"):
        bench.plan_for_profile("ci", ks=(0,))
    assert bench.parse_synthetic(bench.synthetic_pair_name(0.25)) == 0.25
    assert bench.parse_synthetic("gpt2_dev") is None


# ---------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------


def _tiny_plan(**kw):
    fields = dict(pairs=("synthetic-eps0.05",), domains=("code",), ks=(1, 3), n_prompts=1, max_new_tokens=(8,),
                  temperatures=(0.0,), hf_peers=True, profile="test")
    fields.update(kw)
    return bench.SweepPlan(**fields)


def test_sweep_writes_resumes_and_records_provenance(tmp_path):
    out = tmp_path / "r.jsonl"
    plan = _tiny_plan(n_repeats=1)
    bench.run_sweep(plan, out, progress=False, command="test-run")
    first = read_jsonl(out)
    # autoregressive, speculative K=1 and K=3, transformers baseline, transformers assisted K=1 and K=3
    assert sorted((r.method, r.meta["config"]["k"]) for r in first) == sorted(
        [("autoregressive", 0), ("speculative", 1), ("speculative", 3), ("hf_autoregressive", 0),
         ("hf_assisted", 1), ("hf_assisted", 3)])
    for r in first:
        assert r.meta["config_hash"] == bench.BenchmarkConfig.from_dict(r.meta["config"]).config_hash
        assert r.n_new == 8 and r.meta["repeat"] == 0
    by = {(r.method, r.meta["config"]["k"]): r.tokens for r in first}
    # greedy speculative decoding reproduces the target's greedy tokens, in our loop and in transformers'
    assert by[("speculative", 1)] == by[("speculative", 3)] == by[("autoregressive", 0)]
    assert by[("hf_assisted", 3)] == by[("hf_autoregressive", 0)]

    bench.run_sweep(plan, out, progress=False, command="test-run")  # nothing left to do
    assert len(read_jsonl(out)) == len(first)
    bench.run_sweep(_tiny_plan(ks=(1, 3, 2), n_repeats=1), out, progress=False, command="test-run-more")
    # only K=2 is new, for our loop and for the transformers peer; each runs next to a fresh
    # record of its own baseline, so that its speedup divides timings made in the same run
    recs = read_jsonl(out)
    new = recs[len(first):]
    assert sorted((r.method, r.meta["config"]["k"]) for r in new) == sorted(
        [("autoregressive", 0), ("speculative", 2), ("hf_autoregressive", 0), ("hf_assisted", 2)])
    assert len({r.meta["run_id"] for r in new}) == 1 and new[0].meta["run_id"] != first[0].meta["run_id"]
    s = analysis.speedups(analysis.load_results(out))
    assert len(s) == 6 and s.groupby("run_id").size().to_dict() == {first[0].meta["run_id"]: 4, new[0].meta["run_id"]: 2}

    prov = json.loads(bench.provenance_path(out).read_text())
    assert prov["results"] == "r.jsonl"
    assert [r["n_new_records"] for r in prov["runs"]] == [len(first), 0, 4]
    run = prov["runs"][-1]
    assert run["command"] == "test-run-more" and run["kind"] == "provenance" and run["profile"] == "test"
    for key in ("device_name", "host_cpu", "date", "versions", "load_average_start", "load_average_end"):
        assert run[key]
    assert run["forced_while_busy"] is False and run["others_cpu_max"] is not None
    assert set(run["versions"]) >= {"torch", "transformers", "bitsandbytes"}


def test_repeats_run_round_robin_with_their_baseline_and_resume(tmp_path):
    out = tmp_path / "rep.jsonl"
    bench.run_sweep(_tiny_plan(hf_peers=False, n_repeats=1), out, progress=False)
    bench.run_sweep(_tiny_plan(hf_peers=False, n_repeats=3), out, progress=False)  # resumes: repeats 1 and 2
    recs = read_jsonl(out)
    order = [(r.meta["repeat"], r.method, r.meta["config"]["k"]) for r in recs]
    forward = [("autoregressive", 0), ("speculative", 1), ("speculative", 3)]
    # even repeats in the block's order, odd ones reversed: A B C, C B A, A B C
    assert order == [(0, *m) for m in forward] + [(1, *m) for m in forward[::-1]] + [(2, *m) for m in forward]
    assert bench.completed_hashes(out) == {(r.meta["config_hash"], r.meta["repeat"]) for r in recs}
    assert len({tuple(r.tokens) for r in recs}) == 1  # every repeat re-times the same greedy generation
    assert all(r.meta["others_cpu"] is None or r.meta["others_cpu"] >= 0 for r in recs)
    df = analysis.load_results(out)
    s = analysis.speedups(df)
    assert sorted(s.repeat) == [0, 0, 1, 1, 2, 2]  # each speculative record paired with its own repeat's baseline
    acc = analysis.acceptance_by_domain(df)
    assert (acc.rounds == [len(recs[1].drafted_per_round), len(recs[2].drafted_per_round)]).all()  # one repeat counted


def test_a_busy_machine_is_refused_unless_forced(tmp_path, monkeypatch):
    out = tmp_path / "busy.jsonl"
    monkeypatch.setattr(provenance, "load_average", lambda: [4.0, 3.0, 2.0])
    monkeypatch.setattr(bench, "load_average", provenance.load_average)
    with pytest.raises(bench.BusyMachineError, match="load average is 4.00"):
        bench.run_sweep(_tiny_plan(hf_peers=False, n_repeats=1), out, progress=False, max_load=1.5)
    assert not out.exists() and not bench.provenance_path(out).exists()  # nothing written, nothing lost
    bench.run_sweep(_tiny_plan(hf_peers=False, n_repeats=1), out, progress=False, max_load=1.5, force=True)
    run = json.loads(bench.provenance_path(out).read_text())["runs"][0]
    assert run["forced_while_busy"] is True and run["load_average_start"] == [4.0, 3.0, 2.0]
    assert run["max_load"] == 1.5


def test_others_cpu_sees_another_process_burning_a_core():
    import subprocess
    import sys

    meter = bench.OthersCPU()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"],
                   check=True)
    cores = meter.cores()
    assert cores is not None and cores > 0.3  # the child burned one core for about the whole interval


def test_unavailable_and_cross_vocabulary_pairs_are_skipped_with_one_line(tmp_path, capsys):
    out = tmp_path / "skip.jsonl"
    bench.run_sweep(_tiny_plan(pairs=("gpt2_dev", "tinyllama_llama3")), out, progress=False)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 2
    assert lines[0].startswith("skipping pair gpt2_dev: weights not available here")
    assert lines[1].startswith("skipping pair tinyllama_llama3: different vocabularies")
    assert not out.exists() or out.read_text() == ""
    prov = json.loads(bench.provenance_path(out).read_text())
    assert set(prov["runs"][0]["skipped_pairs"]) == {"gpt2_dev", "tinyllama_llama3"}


@pytest.mark.parametrize("args, says", [
    (["--ks", "0"], "--ks"), (["--ks", "1,x"], "--ks"), (["--pairs", "nope"], "--pairs"),
    (["--n-prompts", "0"], "--n-prompts"), (["--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--temperatures", "-1"], "--temperatures"), (["--domains", "poetry"], "--domains"),
    (["--repeats", "0"], "--repeats"), (["--profile", "laptop"], "--profile")])
def test_cli_refuses_bad_arguments_with_one_line_before_any_work(tmp_path, capsys, monkeypatch, args, says):
    def no_work(*a, **k):
        raise AssertionError("the sweep started before the arguments were checked")

    monkeypatch.setattr(bench, "run_sweep", no_work)
    out = tmp_path / "bad.jsonl"
    with pytest.raises(SystemExit) as exit_:
        bench.main(["run", "--out", str(out), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_cli_refuses_to_record_into_data_results_on_a_busy_machine(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(provenance, "load_average", lambda: [9.0, 9.0, 9.0])
    monkeypatch.setattr(bench, "load_average", provenance.load_average)
    out = tmp_path / "data" / "results" / "x.jsonl"
    code = bench.main(["run", "--out", str(out), "--profile", "ci", "--pairs", "synthetic-eps0.2", "--ks", "1",
                       "--max-new-tokens", "4", "--no-hf-peers", "--repeats", "1"])
    assert code == 3 and "load average is 9.00" in capsys.readouterr().err and not out.exists()
    code = bench.main(["run", "--out", str(out), "--profile", "ci", "--pairs", "synthetic-eps0.2", "--ks", "1",
                       "--max-new-tokens", "4", "--no-hf-peers", "--repeats", "1", "--force"])
    assert code == 0 and json.loads(bench.provenance_path(out).read_text())["runs"][0]["forced_while_busy"]


def test_cli_runs_a_tiny_sweep(tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    assert bench.main(["run", "--out", str(out), "--profile", "ci", "--pairs", "synthetic-eps0.2", "--ks", "2",
                       "--max-new-tokens", "6", "--no-hf-peers"]) == 0
    recs = read_jsonl(out)
    assert {r.method for r in recs} == {"autoregressive", "speculative"}
    prov = json.loads(bench.provenance_path(out).read_text())
    assert prov["runs"][0]["command"].startswith("python -m specdec.bench run --out")
    assert bench.main(["summary", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "decode speedup" in printed and "speedup_e2e" in printed and "alpha_hat" in printed
    with pytest.raises(SystemExit) as exit_:
        bench.main(["summary", str(tmp_path / "missing.jsonl")])
    assert exit_.value.code == 2 and "missing.jsonl" in capsys.readouterr().err


def test_cli_writes_one_file_per_pair_into_a_folder(tmp_path, capsys):
    out = tmp_path / "per_pair"
    assert bench.main(["run", "--out", f"{out}/", "--profile", "ci", "--pairs", "synthetic-eps0.2,synthetic-eps0.05",
                       "--ks", "1", "--max-new-tokens", "4", "--no-hf-peers", "--repeats", "1"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["synthetic-eps0.05.jsonl", "synthetic-eps0.05.provenance.json",
                     "synthetic-eps0.2.jsonl", "synthetic-eps0.2.provenance.json"]
    for name in ("synthetic-eps0.05", "synthetic-eps0.2"):
        assert {r.meta["config"]["pair"] for r in read_jsonl(out / f"{name}.jsonl")} == {name}
        prov = json.loads(bench.provenance_path(out / f"{name}.jsonl").read_text())["runs"]
        assert len(prov) == 1 and prov[0]["n_new_records"] == len(read_jsonl(out / f"{name}.jsonl"))


def test_wait_for_quiet_returns_when_the_load_drops(monkeypatch):
    loads = iter([[3.0, 2.0, 1.0], [2.0, 2.0, 1.0], [1.0, 2.0, 1.0]])
    monkeypatch.setattr(provenance, "load_average", lambda: next(loads))
    monkeypatch.setattr(provenance.time, "sleep", lambda s: None)
    assert bench.wait_for_quiet(1.5, timeout_s=60) == [1.0, 2.0, 1.0]


# ---------------------------------------------------------------------------------------------
# The cost side
# ---------------------------------------------------------------------------------------------


def test_measure_step_costs_shapes():
    from specdec.synthetic import synthetic_pair

    _, target = synthetic_pair(0.1, n_layers=2)
    t = bench.measure_step_costs(target, n_tokens=(1, 3), context_len=8, repeats=2, warmup=1)
    assert list(t.n_tokens) == [1, 3] and (t.seconds > 0).all() and t.relative.iloc[0] == 1.0
    with pytest.raises(ValueError):
        bench.measure_step_costs(target, n_tokens=(0,))


def _gpu_cost_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_cost", REPO / "scripts" / "gpu_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_cost_script_tiny(tmp_path, capsys):
    out = tmp_path / "gpu_cost.json"
    assert _gpu_cost_script().main(["--tiny", "--out", str(out), "--pairs", "gpt2_dev,llama3_self"]) == 0
    assert "llama3_self: c = " in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["tiny"] is True and rec["provenance"]["kind"] == "provenance"
    assert rec["provenance"]["command"].startswith("python scripts/gpu_cost.py --tiny")
    assert [p["pair"] for p in rec["pairs"]] == ["gpt2_dev", "llama3_self"]
    for p in rec["pairs"]:
        assert math.isfinite(p["c"]) and p["c"] > 0
        assert [r["n_tokens"] for r in p["verify_curve"]] == [1, 2, 3, 5, 9]
    assert rec["pairs"][1]["draft_quantization"] == "nf4"


def test_gpu_cost_script_refuses_full_shapes_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run is allowed")
    with pytest.raises(SystemExit, match="--tiny"):
        _gpu_cost_script().main(["--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_engine_path_runs_our_loops_and_leaves_generate_on_the_loaded_model():
    from specdec import fastpath

    from .helpers import tiny_llama

    class Tokenizer:  # what run_config asks of one
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    target = tiny_llama(n_layers=2)
    pair = bench.BenchPair("smollm2_ngram", None, target, tokenizer=Tokenizer())
    assert pair.engine is target and pair.path == fastpath.PLAIN
    path = pair.use_engine_path()
    assert path == pair.path and path.dtype == "float32" and set(pair.path_table["path"]) >= {path.label}
    assert pair.target is target and (pair.engine is target) == (path == fastpath.PLAIN)
    prompt = __import__("torch").arange(5)
    common = dict(pair="smollm2_ngram", domain="code", prompt_id="code/0", max_new_tokens=6)
    ar = bench.run_config(pair, bench.BenchmarkConfig(method="autoregressive", k=0, **common), prompt)
    spec = bench.run_config(pair, bench.BenchmarkConfig(method="speculative", k=3, **common), prompt)
    hf = bench.run_config(pair, bench.BenchmarkConfig(method="hf_autoregressive", k=0, **common), prompt)
    assert ar.meta["path"] == spec.meta["path"] == path.label and hf.meta["path"] == "as loaded"
    assert ar.tokens == spec.tokens == hf.tokens


def test_a_killed_run_is_closed_by_the_next(tmp_path):
    out = tmp_path / "r.jsonl"
    plan = _tiny_plan(hf_peers=False, n_repeats=1)
    bench.run_sweep(plan, out, progress=False)
    prov_path = bench.provenance_path(out)
    prov = json.loads(prov_path.read_text())
    # what a process killed mid-run leaves behind: its record as written at the start
    prov["runs"][0].update(finished=None, n_new_records=0)
    prov_path.write_text(json.dumps(prov))
    bench.run_sweep(plan, out, progress=False)  # nothing left to run, but it closes the open record
    runs = json.loads(prov_path.read_text())["runs"]
    assert runs[0]["finished"] == "interrupted" and runs[0]["n_new_records"] == len(read_jsonl(out)) == 3
    assert runs[1]["finished"] not in (None, "interrupted")
