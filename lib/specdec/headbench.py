"""The trained head against every other drafter, in one interleaved run (chapter 10).

:func:`head_report` times on the book's prompts (all three domains; the head was trained on
none of them, :mod:`specdec.headdata`), round robin through
:func:`specdec.enginebench.run_interleaved`:

* ours, on the target path chosen here: autoregressive, the head (``eagle``), prompt lookup
  (``ngram``) and a 4-bit weight-only copy of the target (``int4``), all with the same K;
  at temperature 1 the autoregressive loop and the head again (``*_t1``);
* ours with token trees (chapter 11, :func:`specdec.trees.tree_generate`): the head's trees
  greedy (``eagle_tree``, grown dynamically to the size :func:`specdec.trees.best_tree` picks
  from this machine's measured verify cost) and at temperature 1 (``eagle_tree_t1``, the static
  shape of that size), and prompt lookup's matches as branches (``ngram_tree``);
* ``transformers``: ``generate()``, with prompt lookup, and with the 4-bit copy as assistant.

It reports, from that one run: tokens per target pass (``tau``) and acceptance by draft
position and by domain; the head's cost ratio c; its speedup over our autoregressive loop and
over each ``transformers`` method (:func:`specdec.enginebench.paired_speedups`).
``python -m specdec.bench head`` prints them and writes ``data/results/head_cpu.json``.
"""

from __future__ import annotations

import numpy as np
import torch

from .drafters import ModelDrafter, NGramDrafter
from .analysis import HF_METHODS
from .enginebench import hf_method, our_method, paired_speedups, run_interleaved
from .metrics import acceptance_by_position, acceptance_rate, cost_ratio, survival_by_position, tokens_per_round
from .provenance import require_quiet, write_report
from .steptime import verify_costs  # noqa: F401  (chapter 11 and the ablations call it from here)
from .sampling import SamplingParams

__all__ = ["OURS", "THEIRS", "results_path", "run_head_benchmark", "tau_table", "position_acceptance", "position_survival",
           "summarise_head", "plan_vs_measured", "plan_gap", "bench_samples", "ENGINE_STEPS", "engine_and_method",
           "head_report", "format_head_report"]

OURS = ("autoregressive", "eagle", "ngram", "int4", "autoregressive_t1", "eagle_t1", "eagle_tree", "eagle_tree_t1",
        "ngram_tree")
THEIRS = HF_METHODS  # generate() alone, with prompt lookup, with an assistant model
#: ``generate()`` on the target path our loops run (the packed copy): with ``hf_autoregressive`` on
#: the model as loaded and our own autoregressive loop, it splits a speedup over ``generate()``
#: into the kernel path's share, the loop's share and the drafter's share.
ENGINE = ("hf_autoregressive_packed",)
T1 = SamplingParams(temperature=1.0)


def results_path():
    """The committed run chapter 10 reads: ``data/results/head_cpu.json``."""
    from .provenance import repo_root

    return repo_root() / "data" / "results" / "head_cpu.json"


def tree_method(target, make_drafter, max_new_tokens: int = 64, params: SamplingParams | None = None,
                stop_ids=frozenset(), **tree_options):
    """A method for :func:`specdec.enginebench.run_interleaved`: :func:`specdec.trees.tree_generate`."""
    from .trees import tree_generate

    def run(prompt):
        res = tree_generate(target, make_drafter(), prompt, max_new_tokens, params, frozenset(stop_ids), **tree_options)
        return dict(result=res, draft_s=res.phase_s.get("draft", 0.0), n_drafted=sum(res.drafted_per_round),
                    n_accepted=sum(res.accepted_per_round), n_rounds=len(res.round_latencies_s))

    return run


def run_head_benchmark(target, fast_target, head, draft, prompts, stop_ids=frozenset(), max_new_tokens: int = 64,
                       k: int = 4, repeats: int = 3, progress: bool = True, tree: dict | None = None,
                       engine: bool = False):
    """One interleaved run of :data:`OURS` and :data:`THEIRS` (and :data:`ENGINE` with
    ``engine``); a DataFrame of records.

    ``tree``: the trees' options, ``n_nodes``, ``depth`` and ``shape`` (the static shape for
    sampling); by default 16 nodes, 4 levels of 4."""
    from .eagle import EagleDrafter
    from .trees import full_shape

    tree = dict(n_nodes=16, depth=4, top_k=4) | (tree or {})
    shape = tree.get("shape") or full_shape(tree["depth"], tree["top_k"], tree["n_nodes"])

    common = dict(max_new_tokens=max_new_tokens, stop_ids=frozenset(stop_ids))
    methods = {
        "autoregressive": our_method(fast_target, None, **common),
        "eagle": our_method(fast_target, lambda: EagleDrafter(head), k, **common),
        "ngram": our_method(fast_target, NGramDrafter, k, **common),
        "int4": our_method(fast_target, lambda: ModelDrafter(draft, name="int4"), k, models=(draft,), **common),
        "autoregressive_t1": our_method(fast_target, None, params=T1, **common),
        "eagle_t1": our_method(fast_target, lambda: EagleDrafter(head), k, params=T1, **common),
        "eagle_tree": tree_method(fast_target, lambda: EagleDrafter(head), depth=tree["depth"], top_k=tree["top_k"],
                                  n_nodes=tree["n_nodes"], **common),
        "eagle_tree_t1": tree_method(fast_target, lambda: EagleDrafter(head), params=T1, shape=shape, **common),
        "ngram_tree": tree_method(fast_target, NGramDrafter, depth=tree["depth"], top_k=tree["top_k"],
                                  n_nodes=tree["n_nodes"], **common),
        "hf_autoregressive": hf_method(target, "hf_autoregressive", **common),
        "hf_prompt_lookup": hf_method(target, "hf_prompt_lookup", prompt_lookup_num_tokens=k,
                                      max_matching_ngram_size=NGramDrafter().max_ngram, **common),
        "hf_assisted": hf_method(target, "hf_assisted", assistant_model=draft, num_assistant_tokens=k,
                                 num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0,
                                 **common),
    }
    if engine:
        methods["hf_autoregressive_packed"] = hf_method(fast_target, "hf_autoregressive", **common)
    df = run_interleaved(methods, prompts, repeats, progress, desc="drafters")
    df["domain"] = df["prompt_id"].str.split("/").str[0]
    return df


def _rounds(df, method=None):
    """The rounds of every run of ``method`` (all methods when None): ``(drafted, accepted)``."""
    rows = df if method is None else df[df["method"] == method]
    drafted = [d for r in rows["result"] for d in r.drafted_per_round]
    accepted = [a for r in rows["result"] for a in r.accepted_per_round]
    return drafted, accepted


def tau_table(df):
    """Tokens per target pass (:func:`specdec.metrics.tokens_per_round`) of each speculative
    method of ours, overall and per domain, pooled over runs."""
    import pandas as pd

    spec = df[df["n_rounds"].fillna(0) > 0]
    rows = []
    for (method, domain), g in list(spec.groupby(["method", "domain"])) + [((m, "all"), g) for m, g in
                                                                          spec.groupby("method")]:
        drafted, accepted = _rounds(g)
        rows.append(dict(method=method, domain=domain, tau=tokens_per_round(drafted, accepted),
                         acceptance=acceptance_rate(drafted, accepted)))
    return pd.DataFrame(rows).pivot(index="method", columns="domain", values="tau")


def position_survival(df, method: str, k: int):
    """For draft positions 1..k: the share of rounds that drafted that far whose drafts were all
    accepted up to there (:func:`specdec.metrics.survival_by_position`)."""
    return np.array(survival_by_position(*_rounds(df, method), k))


def position_acceptance(df, method: str, k: int):
    """For draft positions 1..k: the chance the draft there is accepted given the ones before
    it were (:func:`specdec.metrics.acceptance_by_position`, conditional), for the positions
    some round reached (a position no round reached has no such chance: the list stops there)."""
    acc = acceptance_by_position(*_rounds(df, method))[:k]
    return np.array([a for a in acc if a == a])


def summarise_head(df, k: int) -> dict:
    """The figures of the run: tau by method and domain, acceptance by position, the head's
    cost ratio c (one head step over one target decode step), and the head's speedups."""
    ar = df[df["method"] == "autoregressive"]
    ar_step = (ar["decode_steps_s"] / (ar["n_new"] - 1)).median()
    out = {"tau": tau_table(df).round(4).to_dict(orient="index"),
           "position_survival": {m: position_survival(df, m, k).tolist() for m in ("eagle", "eagle_t1", "int4")},
           "position_acceptance": {m: position_acceptance(df, m, k).tolist() for m in ("eagle", "eagle_t1", "int4")},
           "tree_nodes": {m: float(df[df["method"] == m]["n_drafted"].sum() / max(1, df[df["method"] == m]["n_rounds"].sum()))
                          for m in ("eagle_tree", "eagle_tree_t1", "ngram_tree")}}
    cost = {}
    for m in ("eagle", "int4"):
        d = df[df["method"] == m]
        cost[m] = float(np.median([cost_ratio(s, n, ar_step) for s, n in zip(d["draft_s"], d["n_drafted"]) if n > 0]))
    out["cost_ratio"] = cost
    pairs = [("eagle", "autoregressive"), ("eagle_t1", "autoregressive_t1"), ("ngram", "autoregressive"),
             ("eagle_tree", "autoregressive"), ("eagle_tree_t1", "autoregressive_t1"), ("ngram_tree", "autoregressive"),
             ("eagle_tree", "eagle"), ("eagle_tree_t1", "eagle_t1"), ("ngram_tree", "ngram"),
             ("int4", "autoregressive"), ("autoregressive", "hf_autoregressive"),
             ("eagle", "hf_autoregressive"), ("eagle", "hf_prompt_lookup"), ("eagle", "hf_assisted"),
             ("hf_prompt_lookup", "hf_autoregressive"), ("hf_assisted", "hf_autoregressive")]
    if "hf_autoregressive_packed" in set(df["method"]):  # the engine apart from the method
        pairs += [("hf_autoregressive_packed", "hf_autoregressive"), ("autoregressive", "hf_autoregressive_packed")]
    out["speedups"] = {f"{a}_vs_{b}": paired_speedups(df, a, b) for a, b in pairs}
    # where each drafter pays: the decode speedup over plain decoding, domain by domain
    domains = sorted(set(df["domain"]))
    out["decode_speedup_by_domain"] = {
        m: {d: paired_speedups(df[df["domain"] == d], m, "autoregressive")["decode"] for d in domains}
        for m in ("eagle", "eagle_tree", "ngram", "ngram_tree", "int4")}
    # the fastest thing transformers offers here, end to end: the head against it
    theirs = {m: float(np.median([r.total_s for r in df[df["method"] == m]["result"]])) for m in THEIRS}
    fastest = min(theirs, key=theirs.get)
    out["fastest_transformers_method"] = fastest
    out["eagle_vs_fastest_transformers"] = out["speedups"][f"eagle_vs_{fastest}"]
    return out


def plan_vs_measured(report: dict):
    """The law's prediction beside the measurement, for the head's chain (at the K the run
    drafted) and its greedy tree (the planned one): tokens per round and decode speedup over our
    autoregressive loop, from a :func:`head_report`. The measured speedup is the median over
    runs with its range."""
    import pandas as pd

    plan, fig = report["plan"], report["figures"]
    chain = next(r for r in plan["chains"] if int(r["k"]) == report["k"])
    tree = plan["tree"]
    rows = []
    for label, predicted, method in [(f"chain, K = {report['k']}", chain, "eagle"),
                                     (f"tree, {tree['n_nodes']} nodes", tree, "eagle_tree")]:
        sp = fig["speedups"][f"{method}_vs_autoregressive"]["decode"]
        rows.append(dict(drafting=label, predicted_tau=float(predicted["expected_tokens"]),
                         measured_tau=float(fig["tau"][method]["all"]), predicted_speedup=float(predicted["speedup"]),
                         measured_speedup=sp["median"], measured_lo=sp["lo"], measured_hi=sp["hi"]))
    df = pd.DataFrame(rows).set_index("drafting")
    # speedup = tokens per round / cost per round, so a miss splits into the two exactly
    df["tau_ratio"] = df["measured_tau"] / df["predicted_tau"]
    df["cost_ratio"] = df["tau_ratio"] / (df["measured_speedup"] / df["predicted_speedup"])
    return df


def plan_gap(row) -> str:
    """One sentence on a row of :func:`plan_vs_measured`: whether the predicted speedup lies in
    the measured range, and otherwise which factor of the miss is larger -- tokens per round
    (acceptance) or cost per round (what the law's ``v`` and ``c`` leave out)."""
    if row["measured_lo"] <= row["predicted_speedup"] <= row["measured_hi"]:
        return "The prediction lies within the range measured over runs."
    ratio = row["measured_speedup"] / row["predicted_speedup"]
    tau_off, cost_off = abs(np.log(row["tau_ratio"])), abs(np.log(row["cost_ratio"]))
    return (f"The measurement is {abs(ratio - 1):.0%} {'below' if ratio < 1 else 'above'} the prediction: tokens per "
            f"round came out at {row['tau_ratio']:.0%} of the expected and the cost per round at "
            f"{row['cost_ratio']:.0%}, so {'acceptance' if tau_off >= cost_off else 'cost'} accounts for more of it.")


#: from `transformers`' generate() on the model as loaded to the head's tree: each step changes
#: one thing (label, the faster method, the one it is timed against in the same run)
ENGINE_STEPS = (("kernel path: generate() on the packed target", "hf_autoregressive_packed", "hf_autoregressive"),
                ("our loop: autoregressive, packed target", "autoregressive", "hf_autoregressive_packed"),
                ("drafter: the head's chain", "eagle", "autoregressive"),
                ("tree: the head's tree over its chain", "eagle_tree", "eagle"))


def engine_and_method(report: dict):
    """What each layer contributes, from a :func:`head_report` run with the engine comparison:
    the decode speedup of each step of :data:`ENGINE_STEPS` (median over paired runs, range),
    and their running product, the speedup over `generate()` on the model as loaded."""
    import pandas as pd

    sps = report["figures"]["speedups"]
    rows, total = [], 1.0
    for label, mine, peer in ENGINE_STEPS:
        key = f"{mine}_vs_{peer}"
        if key not in sps:
            raise KeyError(f"the run has no {key} comparison (record it with `python -m specdec.bench head`)")
        d = sps[key]["decode"]
        total *= d["median"]
        rows.append(dict(step=label, speedup=d["median"], lo=d["lo"], hi=d["hi"], cumulative=total))
    return pd.DataFrame(rows).set_index("step")


def bench_samples(report: dict, tokenizer, method: str = "autoregressive", repeat: int = 0) -> list:
    """The benchmark's prompts with the target's own greedy answers, as training-style texts
    (:class:`specdec.headdata.Sample`), from a :func:`head_report`'s records of ``method``: what
    the head met in the run, to evaluate it on exactly as on its held-out answers."""
    from .headdata import Sample
    from .prompts import DOMAINS, encode_prompt, load_prompts

    prompts = {p["id"]: p for d in DOMAINS for p in load_prompts(d, report["n_per_domain"])}
    out = []
    for rec in report["records"]:
        if rec["method"] != method or rec["repeat"] != repeat:
            continue
        prompt = encode_prompt(tokenizer, prompts[rec["prompt_id"]]["prompt"]).tolist()
        # a record keeps the tokens generated after the prompt
        out.append(Sample(prompt, list(rec["tokens"]), rec["prompt_id"].split("/")[0], rec["prompt_id"]))
    if not out:
        raise ValueError(f"no records of {method!r}, repeat {repeat}")
    return out


def head_step_cost(head, model, context: int = 256, repeats: int = 20) -> float:
    """c of the head: one head step (a level of drafting, the step and its logits) over one target
    decode step, both timed here after ``context`` tokens (:func:`specdec.metrics.cost_ratio`)."""
    from .eagle import HeadCache
    from .profiling import time_repeated
    from .steptime import time_forwards

    H = head.cfg.hidden_size
    cache = HeadCache()
    with torch.inference_mode():
        head.step(cache, torch.zeros(context, H), torch.zeros(context, dtype=torch.long), 0)
        x, t = torch.zeros(1, H), torch.zeros(1, dtype=torch.long)

        def one_step():
            cache.crop(context)
            head.logits(head.step(cache, x, t, context))

        samples = time_repeated(one_step, repeats, warmup=2)
    step = np.median(time_forwards({"m": model}, [1], context, repeats=repeats, warmup=2, desc="decode step")["m"][1])
    return cost_ratio(float(np.median(samples)), 1, float(step))


def plan_for_head(head_meta: dict, v: dict[int, float], level_cost: float, k_max: int | None = None,
                  max_nodes: int = 32) -> dict:
    """What the head drafts, by the law (:func:`specdec.theory.plan_drafting`): the chain's K and
    the tree, from the head's held-out acceptance by depth and rank (``head.json``), its cost
    per drafted level here and this machine's verify cost ``v``. K is at most the number of
    steps the head was trained to draft (its held-out table's depth)."""
    from .theory import plan_drafting

    ranks = head_meta["provenance"]["held_out_eval"]["rank_acceptance"]
    plan = plan_drafting(ranks, v, level_cost, k_max=len(ranks) if k_max is None else min(k_max, len(ranks)),
                         max_nodes=max_nodes)
    tree = plan["tree"]
    top_k = max(1 + max(r[-1] for r in tree["shape"]), 1)
    plan["tree_options"] = dict(n_nodes=tree["n_nodes"], depth=tree["depth"], top_k=top_k,
                                shape=[list(r) for r in tree["shape"]])
    return plan


def choose_tree(head_meta: dict, v: dict[int, float], level_cost: float, max_nodes: int = 32):
    """The tree :func:`plan_for_head` picks, as the tree options of :func:`run_head_benchmark`,
    and the table of every size it weighed."""
    plan = plan_for_head(head_meta, v, level_cost, max_nodes=max_nodes)
    return plan["tree_options"], plan["trees"].rename(columns={"speedup": "tokens_per_step"})


def head_report(n_per_domain: int = 4, max_new_tokens: int = 64, k: int | None = None, repeats: int = 3,
                out: str | None = None, force: bool = False, command: str | None = None, progress: bool = True) -> dict:
    """Load SmolLM2, its fastest float32 path, the book's head and a 4-bit copy, measure v(n) and
    the head's step cost here, plan the chain's K (unless ``k`` is given) and the tree by the law
    (:func:`plan_for_head`), run :func:`run_head_benchmark` on the first ``n_per_domain`` prompts
    of each domain, and summarise, with the plan's predictions beside the measurement. With
    ``out`` the figures, records and provenance are written as JSON; under ``data/results`` that
    is refused on a busy machine unless ``force``."""
    import json

    from . import fastpath, quant
    from .eagle import book_head_dir, load_book_head
    from .loaders import load_smollm2
    from .prompts import DOMAINS, encode_prompt, load_prompts, stop_token_ids

    if not 1 <= n_per_domain <= 40 or (k is not None and k < 1) or repeats < 1 or max_new_tokens < 2:
        raise ValueError("need 1 <= n_per_domain <= 40, k >= 1, repeats >= 1, max_new_tokens >= 2")
    load_before = require_quiet(out, force)
    target, tokenizer = load_smollm2()
    path, table = fastpath.choose_path(target)
    fast = fastpath.prepare(target, path)
    head = load_book_head(target)
    head_meta = json.loads((book_head_dir() / "head.json").read_text())
    draft, _ = quant.fastest_weight_only_copy(target, 4)
    v = verify_costs(fast)
    level_cost = head_step_cost(head, fast)
    plan = plan_for_head(head_meta, v, level_cost)
    tree = plan["tree_options"]
    k = plan["chain"]["k"] if k is None else k
    if k < 1:
        raise ValueError("the law says this head should not draft at all here (best K = 0); pass --k to run it anyway")
    prompts = [(p["id"], encode_prompt(tokenizer, p["prompt"])) for d in DOMAINS for p in load_prompts(d, n_per_domain)]
    stops = frozenset(stop_token_ids(tokenizer, target))
    df = run_head_benchmark(target, fast, head, draft, prompts, stops, max_new_tokens, k, repeats, progress, tree,
                            engine=True)
    report = dict(figures=summarise_head(df, k), path=path.to_dict(), paths=table.to_dict("records"), k=k,
                  k_planned=plan["chain"]["k"], verify_cost=v, level_cost=level_cost, tree=tree,
                  plan=dict(chain={key: val for key, val in plan["chain"].items()},
                            tree={key: val for key, val in plan["tree"].items() if key != "shape"},
                            chains=plan["chains"].to_dict("records")),
                  tree_table=plan["trees"].drop(columns=["shape"]).to_dict("records"),
                  n_per_domain=n_per_domain, max_new_tokens=max_new_tokens, repeats=repeats,
                  threads=torch.get_num_threads(),
                  records=df.drop(columns=["result"]).assign(
                      tokens=[r.tokens for r in df["result"]], drafted=[r.drafted_per_round for r in df["result"]],
                      accepted=[r.accepted_per_round for r in df["result"]]).to_dict("records"))
    return write_report(report, out, command, load_before, force)


def format_head_report(report: dict) -> str:
    f = report["figures"]
    k = report["k"]
    lines = [f"tokens per target pass (tau), K={k}, by domain:"]
    for method, row in f["tau"].items():
        lines.append(f"  {method:>10}: " + ", ".join(f"{d} {v:.2f}" for d, v in row.items()))
    for m, acc in f["position_acceptance"].items():
        lines.append(f"acceptance by draft position (given the earlier ones), {m}: " + " ".join(f"{a:.2f}" for a in acc))
    for m, acc in f.get("position_survival", {}).items():
        lines.append(f"rounds whose drafts 1..i all survived, {m}: " + " ".join(f"{a:.2f}" for a in acc))
    lines.append("cost ratio c (one draft step / one target step): "
                 + ", ".join(f"{m} {c:.3f}" for m, c in f["cost_ratio"].items()))
    for key, v in f["speedups"].items():
        h = v["headline"]
        lines.append(f"{key}: {v[h]['median']:.2f}x {h} (range {v[h]['lo']:.2f}-{v[h]['hi']:.2f}); "
                     f"identical tokens {v['identical']}/{v['runs']}")
    lines.append(f"fastest transformers method here: {f['fastest_transformers_method']}")
    return "\n".join(lines)
