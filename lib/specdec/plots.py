"""The book's benchmark figures (chapters 6 and 7), drawn with seaborn.

Every function takes the DataFrame of :func:`specdec.bench.load_results` (one row per
generation), aggregates it with the helpers of :mod:`specdec.bench`, and returns the
matplotlib :class:`~matplotlib.figure.Figure` it drew on (pass ``ax`` to draw into an existing
axes instead). A reader who reruns the harness gets their own figures from their own file.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import bench

__all__ = [
    "speedup_heatmap",
    "acceptance_distributions",
    "latency_cdfs",
    "phase_breakdown",
    "measured_vs_predicted",
    "peer_comparison",
]


def _axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def speedup_heatmap(df: pd.DataFrame, method: str = "speculative", value: str = "speedup", ax=None):
    """Speedup per pair (rows) and K (columns), geometric mean over domains and prompts.

    ``value`` is a column of :func:`specdec.bench.speedups` (``speedup``, ``decode_speedup``,
    ``time_ratio``). Cells above 1 are faster than the pair's own autoregressive baseline.
    """
    table = bench.speedup_table(df, method=method, by=("pair", "k"), value=value)
    grid = table.pivot(index="pair", columns="k", values=value)
    fig, ax = _axes(ax, (1.3 * grid.shape[1] + 3, 0.6 * grid.shape[0] + 1.8))
    lim = max(abs(np.log2(grid.to_numpy(float)[np.isfinite(grid.to_numpy(float))])).max(initial=0.1), 0.1)
    sns.heatmap(np.log2(grid), annot=grid, fmt=".2f", cmap="RdBu", center=0, vmin=-lim, vmax=lim, ax=ax,
                cbar_kws={"label": "log2 speedup"}, linewidths=0.5)
    ax.set_xlabel("K (tokens drafted per round)")
    ax.set_ylabel("pair")
    ax.set_title(f"{method}: {value.replace('_', ' ')} over autoregressive decoding")
    return fig


def acceptance_distributions(df: pd.DataFrame, ax=None):
    """Per-generation acceptance (alpha, :func:`specdec.bench.alpha_estimate`) by domain and pair:
    one point per prompt and K, with a box per group."""
    s = df[(df.method == "speculative") & (df.rounds > 0)]
    if s.empty:
        raise ValueError("no speculative generations in these results")
    fig, ax = _axes(ax, (8, 4))
    sns.boxplot(data=s, x="domain", y="alpha_hat", hue="pair", ax=ax, fliersize=0, boxprops={"alpha": 0.35})
    sns.stripplot(data=s, x="domain", y="alpha_hat", hue="pair", dodge=True, ax=ax, size=5, legend=False,
                  edgecolor="black", linewidth=0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(r"acceptance $\hat\alpha$ per generation")
    ax.set_title("Acceptance by domain (each point: one prompt at one K)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title="pair")
    return fig


def latency_cdfs(df: pd.DataFrame, pairs=None):
    """Per-token latency CDFs, autoregressive vs speculative at each K, one panel per pair.
    The time to first token is left out; tokens that arrive in the same round as the one
    before them have zero latency and show as the jump at the left edge."""
    cdf = bench.latency_cdf(df)
    pairs = list(pairs) if pairs is not None else sorted(cdf.pair.unique())
    if not pairs:
        raise ValueError("no autoregressive or speculative generations in these results")
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.6), squeeze=False, sharey=True)
    for ax, pair in zip(axes[0], pairs):
        sub = cdf[cdf.pair == pair].copy()
        floor = sub.latency_s[sub.latency_s > 0].min() / 2 if (sub.latency_s > 0).any() else 1e-6
        sub["latency_ms"] = sub.latency_s.clip(lower=floor) * 1e3
        sns.ecdfplot(data=sub, x="latency_ms", hue="label", ax=ax, log_scale=True)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(pair)
        ax.set_xlabel("gap before a token (ms)")
        sns.move_legend(ax, "lower right", title=None, fontsize="small")
    axes[0][0].set_ylabel("fraction of tokens")
    fig.suptitle("Per-token latency; tokens arriving with zero gap are drawn at the left edge", y=1.0)
    fig.tight_layout()
    return fig


def phase_breakdown(df: pd.DataFrame, pairs=None):
    """Stacked seconds per generated token in each phase (prefill, draft, verify, sample,
    overhead), the baseline (K = 0) and each K, one panel per pair."""
    table = bench.phase_breakdown(df)
    pairs = list(pairs) if pairs is not None else sorted(table.pair.unique())
    if not pairs:
        raise ValueError("no generations of our loops in these results")
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.8), squeeze=False)
    colors = dict(zip(bench.PHASES, sns.color_palette("deep", len(bench.PHASES))))
    for ax, pair in zip(axes[0], pairs):
        sub = table[table.pair == pair].sort_values("k")
        labels = ["AR" if k == 0 else f"K={k}" for k in sub.k]
        bottom = np.zeros(len(sub))
        for ph in bench.PHASES:
            vals = sub[ph].fillna(0).to_numpy() * 1e3
            ax.bar(labels, vals, bottom=bottom, color=colors[ph], label=ph)
            bottom += vals
        ax.set_title(pair)
        ax.set_ylabel("ms per generated token")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def measured_vs_predicted(df: pd.DataFrame, ax=None):
    """Measured decode speedup against the law's prediction from measured alpha and c (filled
    markers) and against the law with the verification priced as measured (open markers)."""
    mp = bench.measured_vs_predicted(df)
    if mp.empty:
        raise ValueError("need speculative generations and their autoregressive baselines")
    fig, ax = _axes(ax, (5.5, 5))
    sns.scatterplot(data=mp, x="predicted", y="measured", hue="pair", style="k", s=70, ax=ax)
    for _, r in mp.iterrows():
        ax.scatter(r.predicted_verify, r.measured, facecolors="none", edgecolors="grey", s=70)
        ax.plot([r.predicted, r.predicted_verify], [r.measured, r.measured], color="grey", lw=0.6, alpha=0.6)
    hi = float(np.nanmax(mp[["predicted", "predicted_verify", "measured"]].to_numpy())) * 1.1
    lo = float(np.nanmin(mp[["predicted", "predicted_verify", "measured"]].to_numpy())) * 0.9
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted speedup (filled: law with measured α, c; open: verify cost as measured)")
    ax.set_ylabel("measured decode speedup")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize="small")
    return fig


def peer_comparison(df: pd.DataFrame):
    """Our speculative loop against the transformers method of the same pair, each over its own
    autoregressive baseline (left), and all four methods in tokens per second relative to our
    autoregressive loop (right)."""
    s = bench.speedups(df)
    if s[s.method != "speculative"].empty:
        raise ValueError("no transformers generations (hf_assisted / hf_prompt_lookup) in these results")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    s = s.assign(label=s.pair + " / " + s.method)
    sns.barplot(data=s, x="k", y="speedup", hue="label", ax=a1, errorbar=None)
    a1.axhline(1, color="k", lw=0.8)
    a1.set_ylabel("speedup over own autoregressive baseline")
    a1.set_xlabel("K")
    sns.move_legend(a1, "upper left", bbox_to_anchor=(0, -0.15), ncol=2, fontsize="small", title=None)
    rel = _relative_to_ours(df)
    rank = {m: i for i, m in enumerate(bench.METHODS)}
    order = rel.assign(rank=rel.method.map(rank)).sort_values(["rank", "k"]).label.unique()
    sns.barplot(data=rel, x="pair", y="relative", hue="label", hue_order=list(order), ax=a2, errorbar=None)
    a2.axhline(1, color="k", lw=0.8)
    a2.set_ylabel("tokens/s relative to our autoregressive loop")
    a2.tick_params(axis="x", rotation=20)
    a2.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def _relative_to_ours(df: pd.DataFrame) -> pd.DataFrame:
    key = [c for c in bench._KEY]
    ours = df[df.method == "autoregressive"][key + ["tokens_per_s"]].rename(columns={"tokens_per_s": "ours"})
    m = df.merge(ours, on=key)
    m["relative"] = m.tokens_per_s / m.ours
    m["label"] = np.where(m.k == 0, m.method, m.method + " K=" + m.k.astype(str))
    return m
