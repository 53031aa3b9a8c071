"""How lean the engine is: our loops against ``transformers``' in one run (chapter 5).

:func:`run_engine_benchmark` times, on the same prompts and interleaved round robin,

* our autoregressive loop against ``model.generate()``,
* our prompt lookup against ``generate(prompt_lookup_num_tokens=K)``,
* our loop with a model draft against ``generate(assistant_model=draft)``, same draft and K,

each pair of methods with identical greedy output expected. Ours run the target on the path
:func:`specdec.fastpath.choose_path` picked here; ``generate()`` runs the model as loaded, in
the same dtype. It also records the time our speculative rounds spend outside the models'
forward passes, the decode step against the bytes/bandwidth bound, and the draft's cost and
acceptance. :func:`summarise_engine` turns the records into the ratios ``python -m
specdec.bench engine`` prints.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .decoding import autoregressive_generate, speculative_generate
from .drafters import ModelDrafter, NGramDrafter
from .analysis import BASELINE, HF_PEER
from .metrics import acceptance_rate, cost_ratio, speedup
from .provenance import require_quiet, write_report
from .sampling import GREEDY, SamplingParams

__all__ = ["forward_seconds", "PEERS", "our_method", "hf_method", "run_interleaved", "run_engine_benchmark",
           "summarise_engine", "paired_speedups", "engine_report", "format_report"]

# (our method, the transformers method it is compared with)
#: Each of the engine's methods and the ``transformers`` method that does the same (:data:`specdec.analysis.HF_PEER`;
#: the engine's model draft is called ``draft``).
PEERS = (("autoregressive", BASELINE["hf_assisted"]), ("ngram", HF_PEER["ngram"]), ("draft", HF_PEER["model"]))


@contextlib.contextmanager
def forward_seconds(*models: torch.nn.Module):
    """Collect the wall-clock seconds of every top-level forward pass of ``models``.

    Yields a list that fills with one float per forward pass (on a CPU the clock is honest;
    on a GPU the hooks would time launches, so this is a CPU measurement).
    """
    times: list[float] = []
    starts: list[float] = []
    handles = []
    for m in models:
        handles.append(m.register_forward_pre_hook(lambda mod, args: starts.append(time.perf_counter())))
        handles.append(m.register_forward_hook(lambda mod, args, out: times.append(time.perf_counter() - starts.pop())))
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


def our_method(target: torch.nn.Module, make_drafter=None, k: int = 4, max_new_tokens: int = 64,
               params: SamplingParams = GREEDY, stop_ids=frozenset(), models=()):
    """A method for :func:`run_interleaved`: our autoregressive loop (``make_drafter`` None) or
    our speculative loop with a fresh ``make_drafter()`` each run. Its records hold the result,
    the rounds' seconds and how much of them fell outside the forward passes of ``target`` and
    ``models``, the draft's seconds and steps, and the decode steps' seconds."""
    stops = frozenset(stop_ids)

    def run(prompt):
        with forward_seconds(target, *models) as fwd:
            if make_drafter is None:
                res = autoregressive_generate(target, prompt, max_new_tokens, params, stop_ids=stops)
            else:
                res = speculative_generate(target, make_drafter(), prompt, max_new_tokens, k, params, stop_ids=stops)
        rounds = sum(res.round_latencies_s)
        # forward passes inside the rounds: every one but the target's prefill (the first)
        inside = sum(fwd[1:]) if res.round_latencies_s else 0.0
        return dict(result=res, rounds_s=rounds, outside_s=max(0.0, rounds - inside) if rounds else np.nan,
                    draft_s=res.phase_s.get("draft", 0.0), n_drafted=sum(res.drafted_per_round),
                    n_accepted=sum(res.accepted_per_round), n_rounds=len(res.round_latencies_s),
                    decode_steps_s=res.phase_s.get("decode", np.nan))

    return run


def hf_method(model: torch.nn.Module, name: str, max_new_tokens: int = 64, stop_ids=frozenset(), **kwargs):
    """A method for :func:`run_interleaved`: ``model.generate(**kwargs)``, greedy
    (:func:`specdec.hfpeers.hf_generate`)."""
    from .hfpeers import hf_generate

    return lambda prompt: dict(result=hf_generate(model, prompt, max_new_tokens, GREEDY, stop_ids, name, **kwargs))


def run_interleaved(methods: dict, prompts: list[tuple[str, torch.Tensor]], repeats: int = 3, progress: bool = True,
                    desc: str = "methods"):
    """Run every method of ``methods`` (name -> function of a prompt returning a record dict
    with ``result``) on every prompt, ``repeats`` times, round robin: the order rotates every
    prompt and repeat, so that a slow drift of the machine favours no method. Each method runs
    once untimed first (warm-up). Returns a DataFrame, one row per (prompt, repeat, method)."""
    import pandas as pd

    if not prompts:
        raise ValueError("need at least one prompt")
    if repeats < 1:
        raise ValueError("need repeats >= 1")
    names = list(methods)
    for name in names:  # warm-up: first calls pay for allocation and kernel selection
        methods[name](prompts[0][1])
    rows = []
    todo = [(r, pid, ids) for r in range(repeats) for pid, ids in prompts]
    bar = tqdm(total=len(todo) * len(names), desc=desc, disable=not progress)
    for i, (r, pid, ids) in enumerate(todo):
        for name in names[i % len(names):] + names[: i % len(names)]:
            rec = methods[name](ids)
            res = rec["result"]
            rows.append(dict(prompt_id=pid, repeat=r, method=name, n_new=res.n_new,
                             ms_per_token=1e3 / res.decode_tokens_per_s, **rec))
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def run_engine_benchmark(
    target: torch.nn.Module,
    fast_target: torch.nn.Module,
    draft: torch.nn.Module,
    prompts: list[tuple[str, torch.Tensor]],
    stop_ids=frozenset(),
    max_new_tokens: int = 64,
    k_ngram: int = 4,
    k_draft: int = 4,
    repeats: int = 3,
    progress: bool = True,
):
    """The engine's methods (:data:`PEERS`) through :func:`run_interleaved`.

    ``target`` is the model as loaded (what ``generate()`` runs); ``fast_target`` the same model
    on our chosen path (``target`` itself if the plain path won). Returns a DataFrame.
    """
    if max_new_tokens < 2:
        raise ValueError("need max_new_tokens >= 2")
    stops = frozenset(stop_ids)
    common = dict(max_new_tokens=max_new_tokens, stop_ids=stops)
    methods = {
        "autoregressive": our_method(fast_target, None, **common),
        "hf_autoregressive": hf_method(target, "hf_autoregressive", **common),
        "ngram": our_method(fast_target, NGramDrafter, k_ngram, **common),
        "hf_prompt_lookup": hf_method(target, "hf_prompt_lookup", prompt_lookup_num_tokens=k_ngram,
                                      max_matching_ngram_size=NGramDrafter().max_ngram, **common),
        "draft": our_method(fast_target, lambda: ModelDrafter(draft, name="draft"), k_draft, models=(draft,),
                            **common),
        "hf_assisted": hf_method(target, "hf_assisted", assistant_model=draft, num_assistant_tokens=k_draft,
                                 num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0,
                                 **common),
    }
    return run_interleaved(methods, prompts, repeats, progress, desc="engine")


def summarise_engine(df, step_bound_ms: float | None = None) -> dict:
    """The engine's figures from :func:`run_engine_benchmark`'s records.

    For each (ours, theirs) pair: the decode and the end-to-end speedup
    (:func:`specdec.metrics.speedup`), each as the median over prompts of each prompt's median
    over repeats, with the range over all runs; which of the two is the headline; and in how
    many runs the greedy tokens were identical. The headline is decode-only except against
    ``transformers``' speculative methods, which run their prefill inside the first round, so
    that their time to first token includes a round and only end to end compares like with like. Then the median share of our
    speculative rounds spent outside forward passes; our autoregressive ms per token and, given
    ``step_bound_ms``, the bound over it; the draft's cost ratio c (one draft step over one
    target decode step) and its acceptance (accepted over drafted tokens); and our speculative
    methods' speedups over our autoregressive loop.
    """
    out: dict = {}
    for mine, peer in PEERS + (("ngram", "autoregressive"), ("draft", "autoregressive")):
        out[f"{mine}_vs_{peer}"] = paired_speedups(df, mine, peer)
    ar = df[df["method"] == "autoregressive"]
    out["ms_per_token"] = float(ar["ms_per_token"].median())
    if step_bound_ms:
        out["step_bound_ms"] = float(step_bound_ms)
        out["fraction_of_bound"] = float(step_bound_ms / out["ms_per_token"])
    spec = df[df["method"].isin(["ngram", "draft"])]
    out["outside_forward"] = {m: float((g["outside_s"] / g["rounds_s"]).median()) for m, g in spec.groupby("method")}
    d = df[df["method"] == "draft"]
    ar_step = (ar["decode_steps_s"] / (ar["n_new"] - 1)).median()
    out["draft_cost_ratio"] = float(np.median([cost_ratio(s, n, ar_step) for s, n in zip(d["draft_s"], d["n_drafted"])
                                               if n > 0]))
    out["draft_acceptance"] = float(acceptance_rate(d["n_drafted"], d["n_accepted"]) or 0.0)
    return out


def paired_speedups(df, mine: str, peer: str) -> dict:
    """``mine`` over ``peer``, run by run (same prompt, same repeat): the decode and end-to-end
    speedups (median over prompts of each prompt's median; range over runs), the headline,
    and in how many runs the tokens were identical."""
    a = df[df["method"] == mine].set_index(["prompt_id", "repeat"])["result"]
    b = df[df["method"] == peer].set_index(["prompt_id", "repeat"])["result"]
    keys = a.index.intersection(b.index)
    same = sum(a[k].tokens == b[k].tokens for k in keys)
    out = dict(identical=int(same), runs=len(keys))
    for name, e2e in (("decode", False), ("e2e", True)):
        ratio = np.array([speedup(a[k], b[k], end_to_end=e2e) for k in keys])
        by_prompt: dict = {}
        for (pid, _), x in zip(keys, ratio):
            by_prompt.setdefault(pid, []).append(x)
        out[name] = dict(median=float(np.median([np.median(v) for v in by_prompt.values()])),
                         lo=float(ratio.min()), hi=float(ratio.max()))
    # transformers' speculative methods prefill inside their first round, so their first token
    # arrives only after it: for them only the end-to-end ratio compares like with like
    out["headline"] = "e2e" if peer in ("hf_prompt_lookup", "hf_assisted") else "decode"
    return out


def engine_report(n_prompts: int = 12, max_new_tokens: int = 64, k: int = 4, repeats: int = 3, bits: int = 4,
                  out: str | None = None, force: bool = False, command: str | None = None,
                  progress: bool = True) -> dict:
    """Measure everything :func:`summarise_engine` reports on the book's offline target.

    Loads SmolLM2-135M-Instruct in float32, picks its fastest float32 path here
    (:func:`specdec.fastpath.choose_path`), builds a ``bits``-bit weight-only copy as the model
    draft (:func:`specdec.quant.fastest_weight_only_copy`: float32 or bfloat16 activations,
    whichever steps faster here), measures memory bandwidth (the fastest of nine 1 GiB reads)
    for the bytes bound, and times the three peers on the last ``n_prompts`` code prompts,
    which no chapter uses. With ``out`` it writes the figures, the path table and provenance
    as JSON; a file under ``data/results`` is refused on a busy machine unless ``force``.
    """
    from . import fastpath, microbench, quant
    from .loaders import load_smollm2
    from .prompts import encode_prompt, load_prompts, stop_token_ids
    from .selfspec import stored_weight_bytes

    available = len(load_prompts("code"))
    if not 1 <= n_prompts <= available:
        raise ValueError(f"n_prompts must be between 1 and {available} (the code prompts there are), got {n_prompts}")
    load_before = require_quiet(out, force)
    target, tokenizer = load_smollm2()
    all_paths = fastpath.measure_paths(target, context=128, n_tokens=(1, 5), repeats=7)
    path, _ = fastpath.choose_path(target, table=all_paths)
    fast = fastpath.prepare(target, path)
    draft, draft_steps = quant.fastest_weight_only_copy(target, bits, repeats=7)
    draft_dtype = str(next(draft.parameters()).dtype).removeprefix("torch.")
    # the bound is the best the memory delivered: the fastest of the reads, not their median
    bandwidth = microbench.measure_bandwidth(2**30, repeats=9, method="sum", summary="min")
    weight_bytes = stored_weight_bytes(target)
    bound_ms = 1e3 * weight_bytes / bandwidth
    texts = load_prompts("code")[-n_prompts:]
    prompts = [(p["id"], encode_prompt(tokenizer, p["prompt"])) for p in texts]
    stops = frozenset(stop_token_ids(tokenizer, target))
    df = run_engine_benchmark(target, fast, draft, prompts, stops, max_new_tokens, k, k, repeats, progress)
    figures = summarise_engine(df, bound_ms)
    report = dict(
        figures=figures, path=path.to_dict(), paths=all_paths.to_dict("records"),
        bandwidth_gb_s=bandwidth / 1e9, weight_bytes=weight_bytes, draft_bits=bits, draft_dtype=draft_dtype,
        draft_step_ms=draft_steps,
        draft_weight_bytes=stored_weight_bytes(draft), n_prompts=len(prompts), max_new_tokens=max_new_tokens,
        k=k, repeats=repeats, threads=torch.get_num_threads(),
        records=df.drop(columns=["result"]).assign(tokens=[r.tokens for r in df["result"]]).to_dict("records"),
    )
    return write_report(report, out, command, load_before, force)


def format_report(report: dict) -> str:
    """The figures of :func:`engine_report` as lines of text."""
    f = report["figures"]
    lines = [f"target path chosen here: {report['path']['dtype']}, {report['path']['linear']} linear layers "
             f"({report['threads']} threads)"]
    names = {"autoregressive": "our autoregressive loop", "ngram": "our prompt lookup",
             "draft": f"our loop, int{report['draft_bits']} draft", "hf_autoregressive": "generate()",
             "hf_prompt_lookup": "generate(prompt_lookup_num_tokens)", "hf_assisted": "generate(assistant_model)",
             "autoregressive_": "our autoregressive loop"}
    for key, v in f.items():
        if isinstance(v, dict) and "headline" in v:
            mine, peer = key.split("_vs_")
            h, other = v["headline"], "e2e" if v["headline"] == "decode" else "decode"
            lines.append(f"{names[mine]} vs {names.get(peer, peer)}: {v[h]['median']:.2f}x {h} "
                         f"(range {v[h]['lo']:.2f}-{v[h]['hi']:.2f}; {other} {v[other]['median']:.2f}x); "
                         f"identical tokens in {v['identical']}/{v['runs']} runs")
    lines.append(f"decode step {f['ms_per_token']:.1f} ms/token; bytes/bandwidth bound {f['step_bound_ms']:.1f} ms "
                 f"({report['weight_bytes'] / 1e6:.0f} MB at {report['bandwidth_gb_s']:.1f} GB/s): "
                 f"{100 * f['fraction_of_bound']:.0f} % of the bound")
    for m, share in f["outside_forward"].items():
        lines.append(f"time outside forward passes, {names[m]}: {100 * share:.1f} % of its rounds")
    steps = ", ".join(f"{d} activations {ms:.1f} ms" for d, ms in report["draft_step_ms"].items())
    lines.append(f"int{report['draft_bits']} draft ({steps}; chosen: {report['draft_dtype']}): "
                 f"cost ratio c = {f['draft_cost_ratio']:.2f}, acceptance {f['draft_acceptance']:.2f}")
    return "\n".join(lines)
