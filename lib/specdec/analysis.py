"""Results files to DataFrames (chapters 6 and 7): speedups, acceptance, latencies, costs.

A results file holds one JSON line per generation (:func:`specdec.metrics.write_jsonl`), each
with its configuration (:class:`BenchmarkConfig`), the configuration's hash, its run and its
repeat in ``meta``; the benchmark harness :mod:`specdec.bench` writes them, and a
provenance record beside each (:func:`provenance_path`) says how. This module reads them:

* :func:`load_results` -- one row per generation, with its counts, times and phases;
* :func:`speedups`, :func:`summarise`, :func:`speedup_table` -- every generation against the
  baseline timed next to it (:func:`specdec.metrics.speedup`: decode-only is the headline,
  end to end beside it), medians over repeats and geometric means over prompts, with the
  spread over repeats; :func:`relative_to_ours` puts every method against *our*
  autoregressive loop;
* :func:`acceptance_by_domain` -- acceptance per group (the figures of :mod:`specdec.metrics`);
* :func:`latency_cdf`, :func:`phase_breakdown` -- per-token latencies, time per phase;
* :func:`cost_ratios`, :func:`measured_vs_predicted` -- the measured cost side, and the
  speedup law's prediction (:mod:`specdec.theory`) beside the measured speedup;
* :func:`greedy_identity` -- whether every greedy generation emitted its baseline's tokens.

It also holds the vocabulary of a record that the harness and the aggregation share: the
method names (:data:`METHODS`), each method's baseline (:data:`BASELINE`), the phases
(:data:`PHASES`) and the fields a generation and its baseline have in common
(:data:`BASELINE_KEY`). Nothing here imports a decoding loop, so reading a results file or
drawing a figure of it (:mod:`specdec.plots`) loads no model code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .checks import require_int
from .metrics import (GenerationResult, acceptance_rate, alpha_estimate, cost_ratio, read_jsonl,  # noqa: F401
                      tokens_per_round)
from .metrics import speedup as metric_speedup
from .sampling import SamplingParams

__all__ = [
    "METHODS",
    "OUR_METHODS",
    "HF_METHODS",
    "BASELINE",
    "SYNTHETIC_DOMAIN",
    "PHASES",
    "BASELINE_KEY",
    "BenchmarkConfig",
    "provenance_path",
    "alpha_estimate",
    "load_results",
    "first_repeat",
    "speedups",
    "summarise",
    "relative_to_ours",
    "speedup_table",
    "acceptance_by_domain",
    "latency_cdf",
    "phase_breakdown",
    "cost_ratios",
    "measured_vs_predicted",
]

# --------------------------------------------------------------------------------------------
# What a record holds
# --------------------------------------------------------------------------------------------

#: Our two loops (:mod:`specdec.decoding`) and the ``transformers`` ``generate()`` methods.
OUR_METHODS = ("autoregressive", "speculative")
HF_METHODS = ("hf_autoregressive", "hf_assisted", "hf_prompt_lookup")
METHODS = OUR_METHODS + HF_METHODS
#: The baseline each method's speedup divides by.
BASELINE = {"speculative": "autoregressive", "autoregressive": "autoregressive",
            "hf_assisted": "hf_autoregressive", "hf_prompt_lookup": "hf_autoregressive",
            "hf_autoregressive": "hf_autoregressive"}
#: The ``transformers`` method that does what ours does, per kind of drafter (none for the head:
#: ``generate()`` has no EAGLE drafting).
HF_PEER = {"model": "hf_assisted", "ngram": "hf_prompt_lookup", "eagle": None,
           # across vocabularies: generate()'s universal assisted generation matches strings too
           "string": "hf_assisted", "tli": None}
SYNTHETIC_DOMAIN = "random"  # synthetic pairs have no tokenizer: their prompts are random tokens
#: The phases a generation of our loops is split into: ``decode`` is the autoregressive step,
#: ``draft``, ``verify`` and ``sample`` a speculative round, ``overhead`` the rest of the wall time.
PHASES = ("prefill", "decode", "draft", "verify", "sample", "overhead")
#: A generation and its baseline share these: same prompt and settings, same run, same repeat.
BASELINE_KEY = ["pair", "domain", "prompt_id", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                "device", "dtype", "run_id", "repeat"]


@dataclass(frozen=True)
class BenchmarkConfig:
    """One generation of the benchmark. ``k = 0`` for the autoregressive methods;
    ``temperature = 0`` is greedy (``top_k = 0`` and ``top_p = 1`` switch those filters off)."""

    pair: str
    method: str
    k: int
    domain: str
    prompt_id: str
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        autoregressive = self.method in ("autoregressive", "hf_autoregressive")
        if autoregressive and self.k != 0:
            raise ValueError(f"method {self.method!r} drafts nothing: pass k=0, got k={self.k!r}")
        if not autoregressive:
            require_int(f"k (tokens drafted per round by {self.method!r})", self.k, 1)
        require_int("max_new_tokens", self.max_new_tokens, 1)
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype such as 'float32', got {self.dtype!r}")
        self.params  # validates temperature, top_k, top_p

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(temperature=float(self.temperature), top_k=int(self.top_k), top_p=float(self.top_p))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the configuration as sorted JSON: stable across runs,
        machines and Python versions, and different for any change of any field."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> "BenchmarkConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def provenance_path(results_path: str | Path) -> Path:
    """``runs/x.jsonl`` -> ``runs/x.provenance.json``."""
    p = Path(results_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".provenance.json")


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

def load_results(paths) -> "pd.DataFrame":
    """Results file(s) (or a list of GenerationResult) as one row per generation.

    Columns: the :class:`BenchmarkConfig` fields, ``config_hash``, ``run_id``, ``repeat``,
    ``others_cpu`` (cores other processes kept busy meanwhile, where recorded), ``n_new``, ``total_s``, ``ttft_s``, ``decode_s``, ``tokens_per_s``, ``decode_tokens_per_s``,
    ``rounds``, ``drafted``, ``accepted``, ``acceptance_rate``, ``alpha_hat``, one
    ``<phase>_s`` column per phase (overhead included), ``draft_steps``, and ``result`` (the
    :class:`GenerationResult` itself, for per-token data).
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    results = []
    for p in paths:
        results += [p] if isinstance(p, GenerationResult) else read_jsonl(p)
    rows = []
    for r in results:
        if "config" not in r.meta:
            raise ValueError("a result without meta['config'] was not written by specdec.bench; "
                             "run it through run_config/run_sweep")
        row = dict(r.meta["config"])
        row.update(config_hash=r.meta.get("config_hash"), run_id=r.meta.get("run_id", ""),
                   repeat=int(r.meta.get("repeat", 0)), others_cpu=_nan(r.meta.get("others_cpu")), n_new=r.n_new,
                   total_s=r.total_s, ttft_s=r.ttft_s, decode_s=r.decode_s, tokens_per_s=r.tokens_per_s,
                   decode_tokens_per_s=r.decode_tokens_per_s,
                   rounds=len(r.drafted_per_round), drafted=sum(r.drafted_per_round),
                   accepted=sum(r.accepted_per_round),
                   acceptance_rate=r.acceptance_rate if r.acceptance_rate is not None else np.nan,
                   alpha_hat=_nan(alpha_estimate(r.accepted_per_round, r.drafted_per_round)),
                   overhead_s=r.overhead_s if r.phase_s else np.nan, result=r)
        for ph in PHASES[:-1]:
            row[f"{ph}_s"] = r.phase_s.get(ph, 0.0) if r.phase_s else np.nan
        # A model drafter runs one forward pass per drafted token; prompt lookup runs none.
        row["drafter"] = r.meta.get("drafter", "")
        row["draft_steps"] = 0 if row["drafter"] == "ngram" else row["drafted"]
        rows.append(row)
    cols = list(BenchmarkConfig.__dataclass_fields__) + ["config_hash", "run_id", "repeat"]
    df = pd.DataFrame(rows)
    return df[cols + [c for c in df.columns if c not in cols]] if len(df) else pd.DataFrame(columns=cols)


def first_repeat(df):
    """The rows of each configuration's first repeat: a repeat re-times the same seeded
    generation (same tokens, same rounds), so counts pooled over repeats would count each
    round several times."""
    if df.empty or "repeat" not in df:
        return df
    first = df.groupby("config_hash").repeat.transform("min")
    return df[df.repeat == first]


def _nan(x):
    return np.nan if x is None else x


def _gmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x) & (x > 0)]
    return float(np.exp(np.log(x).mean())) if len(x) else np.nan


def speedups(df) -> "pd.DataFrame":
    """One row per non-baseline generation with its baseline's numbers and the speedups.

    The baseline is the generation of the same pair, prompt, token budget, sampling settings,
    run and repeat (timed a few seconds apart, :func:`specdec.bench.run_sweep`), with
    ``autoregressive`` for our speculative loop and ``hf_autoregressive`` for the transformers
    methods (:data:`BASELINE`). Both speedups
    are :func:`specdec.metrics.speedup`, the book's one definition: ``speedup`` the headline,
    decode-only (after the first token), ``speedup_e2e`` end to end (first token included);
    ``speedup_vs_ours`` puts a transformers method against *our* autoregressive baseline.
    """
    import pandas as pd

    def base(method, prefix):
        b = df[df.method == method][BASELINE_KEY + ["result"]]
        return b.rename(columns={"result": prefix})

    parts = []
    for method in ("speculative", "hf_assisted", "hf_prompt_lookup"):
        sub = df[df.method == method]
        if sub.empty:
            continue
        m = sub.merge(base(BASELINE[method], "base_result"), on=BASELINE_KEY, how="inner")
        m = m.merge(base("autoregressive", "ours_result"), on=BASELINE_KEY, how="left")
        m["speedup"] = [metric_speedup(r, b) for r, b in zip(m.result, m.base_result)]
        m["speedup_e2e"] = [metric_speedup(r, b, end_to_end=True) for r, b in zip(m.result, m.base_result)]
        m["speedup_vs_ours"] = [metric_speedup(r, o) if isinstance(o, GenerationResult) else np.nan
                                for r, o in zip(m.result, m.ours_result)]
        m["base_tokens_per_s"] = [b.tokens_per_s for b in m.base_result]
        m["base_decode_tokens_per_s"] = [b.decode_tokens_per_s for b in m.base_result]
        parts.append(m.drop(columns=["base_result", "ours_result"]))
    if not parts:
        raise ValueError("no speculative generations with a matching baseline in these results")
    return pd.concat(parts, ignore_index=True)


def summarise(s, by, value: str) -> "pd.DataFrame":
    """Aggregate a per-generation ``value`` (e.g. a speedup of :func:`speedups`) per group
    ``by``, with its spread. Each repeat of the group -- one pass over all its prompts -- gives
    the geometric mean of ``value`` over those prompts; the value reported is the median of
    these per-repeat means, and ``lo`` and ``hi`` are the smallest and largest of them (how far
    one run of the whole group landed), so the value always lies inside its range.
    ``n_prompts`` and ``n_repeats`` count the prompts and repeats."""
    import pandas as pd

    by = list(by)
    rows = []
    for key, g in s.groupby(by, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        per_repeat = g.groupby("repeat")[value].agg(_gmean).dropna()
        rows.append({**dict(zip(by, key)), value: float(per_repeat.median()) if len(per_repeat) else np.nan,
                     "lo": float(per_repeat.min()), "hi": float(per_repeat.max()),
                     "n_prompts": g.prompt_id.nunique(), "n_repeats": g.repeat.nunique()})
    return pd.DataFrame(rows, columns=by + [value, "lo", "hi", "n_prompts", "n_repeats"])


def relative_to_ours(df) -> "pd.DataFrame":
    """Every generation's decode speedup (:func:`specdec.metrics.speedup`) over *our*
    autoregressive loop on the same prompt, run and repeat, as column ``relative``, with a
    ``label`` (the method, and its K where it drafts); e.g. ``generate()`` against our loop."""
    ours = df[df.method == "autoregressive"][BASELINE_KEY + ["result"]].rename(columns={"result": "ours"})
    m = df.merge(ours, on=BASELINE_KEY)
    m["relative"] = [metric_speedup(r, o) for r, o in zip(m.result, m.ours)]
    m["label"] = np.where(m.k == 0, m.method, m.method + " K=" + m.k.astype(str))
    return m.drop(columns="ours")


def speedup_table(df, method: str = "speculative", by=("pair", "k", "domain"), value: str = "speedup") -> "pd.DataFrame":
    """Per group: the median over repeats of each repeat's geometric-mean speedup over the
    group's prompts, with the range over repeats (:func:`summarise`). ``value`` is a column of
    :func:`speedups`: ``speedup`` (decode-only, the headline) or ``speedup_e2e``."""
    s = speedups(df)
    s = s[s.method == method]
    if s.empty:
        raise ValueError(f"no {method!r} generations with a baseline in these results")
    return summarise(s, by, value)


def acceptance_by_domain(df, by=("pair", "domain", "k", "temperature")) -> "pd.DataFrame":
    """Acceptance of our speculative loop per group, pooled over prompts: ``alpha_hat``
    (:func:`alpha_estimate` over all rounds), ``acceptance_rate`` (accepted / drafted),
    ``mean_accepted`` per round, ``tokens_per_round`` and the number of rounds."""
    import pandas as pd

    s = first_repeat(df[(df.method == "speculative") & (df.rounds > 0)])
    rows = []
    for key, g in s.groupby(list(by), dropna=False):
        acc = [a for r in g.result for a in r.accepted_per_round]
        dra = [d for r in g.result for d in r.drafted_per_round]
        rows.append({**dict(zip(by, key)), "alpha_hat": _nan(alpha_estimate(acc, dra)),
                     "acceptance_rate": _nan(acceptance_rate(dra, acc)),
                     "mean_accepted": float(np.mean(acc)), "tokens_per_round": _nan(tokens_per_round(dra, acc)),
                     "rounds": len(acc), "prompts": g.prompt_id.nunique()})
    return pd.DataFrame(rows)


def latency_cdf(df, methods=("autoregressive", "speculative"), skip_first: bool = True) -> "pd.DataFrame":
    """Per-token latencies in long form (``pair``, ``method``, ``k``, ``label``, ``latency_s``,
    ``cdf``), the first token (time to first token) left out unless ``skip_first=False``.
    A speculative round emits several tokens at once: the first carries the round's latency,
    the others arrive with zero gap."""
    import pandas as pd

    rows = []
    for _, r in df[df.method.isin(methods)].iterrows():
        lat = r.result.token_latencies_s[1:] if skip_first else r.result.token_latencies_s
        label = r.method if r.k == 0 else f"{r.method} K={r.k}"
        rows += [{"pair": r.pair, "method": r.method, "k": r.k, "label": label, "latency_s": x} for x in lat]
    out = pd.DataFrame(rows, columns=["pair", "method", "k", "label", "latency_s"])
    out = out.sort_values(["pair", "label", "latency_s"]).reset_index(drop=True)
    out["cdf"] = out.groupby(["pair", "label"]).cumcount().add(1) / out.groupby(["pair", "label"]).latency_s.transform("size")
    return out


def phase_breakdown(df, per_token: bool = True) -> "pd.DataFrame":
    """Mean seconds per phase (prefill, draft, verify, sample, overhead) per pair, method and K,
    per generated token when ``per_token`` (our loops only: transformers' generate is not split)."""
    s = df[df.method.isin(OUR_METHODS)].copy()
    cols = [f"{p}_s" for p in PHASES]
    if per_token:
        s[cols] = s[cols].div(s.n_new.clip(lower=1), axis=0)
    return s.groupby(["pair", "method", "k"])[cols].mean().reset_index().rename(columns=lambda c: c.removesuffix("_s"))


def cost_ratios(df) -> "pd.DataFrame":
    """The measured cost side of each pair and K, pooled over prompts:

    * ``t_step``: seconds of one target decode step (the baseline's decode phase per token);
    * ``c``: seconds per draft forward pass / ``t_step`` (0 for prompt lookup, whose drafting is
      a search, not a model call; its time is then in ``draft_s_per_round``);
    * ``verify_cost``: one verification of K+1 positions / ``t_step`` (1 in the law's model);
    * ``draft_cost``: all drafting of a round / ``t_step``.
    """
    import pandas as pd

    base = df[df.method == "autoregressive"]
    spec = df[(df.method == "speculative") & (df.rounds > 0)]
    rows = []
    for (pair, k), g in spec.groupby(["pair", "k"]):
        b = base[(base.pair == pair) & base.run_id.isin(g.run_id.unique())]
        steps = (b.n_new - 1).clip(lower=0).sum()
        if steps == 0:
            continue
        # the baseline's step is its "decode" phase (files recorded before that name called it "verify")
        t_step = (b.decode_s.fillna(0) + b.verify_s.fillna(0)).sum() / steps
        c = cost_ratio(g.draft_s.sum(), g.draft_steps.sum(), t_step) if g.draft_steps.sum() else 0.0
        rows.append({"pair": pair, "k": k, "t_step": t_step, "c": c,
                     "verify_cost": g.verify_s.sum() / g.rounds.sum() / t_step,
                     "draft_cost": g.draft_s.sum() / g.rounds.sum() / t_step})
    return pd.DataFrame(rows, columns=["pair", "k", "t_step", "c", "verify_cost", "draft_cost"])


def greedy_identity(df) -> "pd.DataFrame":
    """Per pair and method, how many greedy generations (``identical`` of ``generations``) emitted
    exactly the tokens of our autoregressive loop on the same pair, prompt and token budget: what
    every speculative method must do at temperature 0 (the autoregressive rows themselves, compared
    with the first of them, check that the baseline is deterministic). Generations without such a
    baseline in ``df`` are left out."""
    import pandas as pd

    key = ["pair", "prompt_id", "max_new_tokens"]
    g = df[df.temperature == 0]
    base = g[g.method == "autoregressive"].drop_duplicates(key)
    ref = {tuple(k): tuple(r.tokens) for k, r in zip(base[key].itertuples(index=False), base.result)}
    rows = [(pair, method, tuple(r.tokens) == ref[(pair, prompt, n)])
            for pair, method, prompt, n, r in zip(g.pair, g.method, g.prompt_id, g.max_new_tokens, g.result)
            if (pair, prompt, n) in ref]
    out = pd.DataFrame(rows, columns=["pair", "method", "identical"])
    return (out.groupby(["pair", "method"]).identical.agg(identical="sum", generations="size")
            .reset_index().astype({"identical": int}))


def measured_vs_predicted(df, by=("pair", "k", "domain", "temperature")) -> "pd.DataFrame":
    """Measured decode speedup (:func:`summarise`: ``measured`` with its spread over repeats,
    ``measured_lo`` .. ``measured_hi``) next to two predictions from measured alpha and cost:

    * ``predicted``: the law :func:`specdec.theory.speedup` with ``alpha_hat`` and ``c`` (a
      verification costs one target step);
    * ``predicted_verify``: the same tokens per round, divided by the measured cost of a round,
      ``draft_cost + verify_cost`` target steps (the law with the verification priced as measured).
    """
    from . import theory

    acc = acceptance_by_domain(df, by=by)
    cost = cost_ratios(df)
    sp = speedups(df)
    sp = summarise(sp[sp.method == "speculative"], by, "speedup")
    sp = sp.drop(columns=["n_prompts", "n_repeats"]).rename(
        columns={"speedup": "measured", "lo": "measured_lo", "hi": "measured_hi"})
    out = acc.merge(cost, on=["pair", "k"]).merge(sp, on=list(by))
    ks = out.k.to_numpy(dtype=np.int64)
    alpha = out.alpha_hat.clip(0, 1).to_numpy()
    out["predicted"] = theory.speedup(alpha, out.c.to_numpy(), ks)
    # the round's drafting as measured (draft_cost, in decode steps, is one "step" of depth 1)
    out["predicted_verify"] = theory.predicted_speedup(theory.expected_tokens(alpha, ks), out.verify_cost.to_numpy(),
                                                       out.draft_cost.to_numpy(), 1)
    return out
