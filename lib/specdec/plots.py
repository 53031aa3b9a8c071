"""The book's benchmark figures (chapters 6 and 7), drawn with seaborn.

Every function takes the DataFrame of :func:`specdec.analysis.load_results` (one row per
generation), aggregates it with the helpers of :mod:`specdec.analysis`, and returns the
matplotlib :class:`~matplotlib.figure.Figure` it drew on (pass ``ax`` to draw into an existing
axes instead). A reader who reruns the harness gets their own figures from their own file.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import analysis

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


def _grid(n: int, width: float = 10.0, row_height: float = 3.4, ncols: int = 3, sharey: bool = False):
    """A grid of panels that fits the page: at most ``ncols`` per row, ``width`` inches wide."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, row_height * nrows), squeeze=False, sharey=sharey)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def speedup_heatmap(df: pd.DataFrame, method: str = "speculative", value: str = "speedup", ax=None):
    """Speedup per pair (rows; per pair and temperature where the results hold several) and K
    (columns): the median over repeats of each repeat's geometric mean over the domains'
    prompts, with the range over repeats below it (:func:`specdec.analysis.speedup_table`).

    ``value`` is ``speedup`` (decode-only, the headline) or ``speedup_e2e`` (first token
    included). Cells above 1 are faster than the pair's own autoregressive baseline.
    """
    temps = sorted(df.loc[df.method == method, "temperature"].unique())
    by = ("pair", "temperature", "k") if len(temps) > 1 else ("pair", "k")
    table = analysis.speedup_table(df, method=method, by=by, value=value)
    # one row per pair, or per pair and temperature when the file holds several
    table["row"] = table.pair if len(temps) == 1 else table.pair + table.temperature.map(
        lambda t: ", greedy" if t == 0 else f", T = {t:g}")
    grid = table.pivot(index="row", columns="k", values=value)
    lo = table.pivot(index="row", columns="k", values="lo").reindex_like(grid)
    hi = table.pivot(index="row", columns="k", values="hi").reindex_like(grid)
    notes = grid.copy().astype(object)
    for i in grid.index:
        for k in grid.columns:
            v = grid.loc[i, k]
            notes.loc[i, k] = "" if not np.isfinite(v) else (
                f"{v:.2f}" if lo.loc[i, k] == hi.loc[i, k] else f"{v:.2f}\n{lo.loc[i, k]:.2f}–{hi.loc[i, k]:.2f}")
    fig, ax = _axes(ax, (min(1.4 * grid.shape[1] + 3.5, 9), 0.75 * grid.shape[0] + 1.8))
    vals = grid.to_numpy(float)
    lim = max(abs(np.log2(vals[np.isfinite(vals)])).max(initial=0.1), 0.1)
    sns.heatmap(np.log2(grid), annot=notes, fmt="", cmap="RdBu", center=0, vmin=-lim, vmax=lim, ax=ax,
                cbar_kws={"label": "log2 speedup"}, linewidths=0.5, annot_kws={"fontsize": 9})
    ax.set_xlabel("K (tokens drafted per round)")
    ax.set_ylabel("pair")
    what = "decode speedup (after the first token)" if value == "speedup" else value.replace("_", " ")
    ax.set_title(f"{method}: {what}\nover autoregressive decoding; below: range over repeats", fontsize=11)
    return fig


def acceptance_distributions(df: pd.DataFrame, ax=None):
    """Per-generation acceptance (alpha, :func:`specdec.analysis.alpha_estimate`) by domain and pair:
    one point per prompt and K, with a box per group. Where the results hold several sampling
    temperatures, one panel per temperature, stacked (greedy first); with ``ax`` everything is
    drawn into that one axes."""
    s = df[(df.method == "speculative") & (df.rounds > 0)]
    if s.empty:
        raise ValueError("no speculative generations in these results")
    s = analysis.first_repeat(s)  # repeats re-time the same tokens
    temps = sorted(s.temperature.unique())
    if ax is not None or len(temps) == 1:
        fig, ax = _axes(ax, (9, 4))
        panels = [(ax, s, "Acceptance by domain (each point: one prompt at one K)")]
    else:
        fig, axes = plt.subplots(len(temps), 1, figsize=(9, 3.6 * len(temps)), sharex=True, squeeze=False)
        panels = [(a, s[s.temperature == t], "greedy" if t == 0 else f"T = {t:g}")
                  for a, t in zip(axes[:, 0], temps)]
        fig.suptitle("Acceptance by domain (each point: one prompt at one K)")
    order, hue_order = sorted(s.domain.unique()), sorted(s.pair.unique())
    for i, (a, part, title) in enumerate(panels):
        kw = dict(data=part, x="domain", y="alpha_hat", hue="pair", order=order, hue_order=hue_order, ax=a)
        sns.boxplot(**kw, fliersize=0, boxprops={"alpha": 0.35})
        sns.stripplot(**kw, dodge=True, size=5, legend=False, edgecolor="black", linewidth=0.4)
        a.set_ylim(-0.03, 1.03)
        a.set_ylabel(r"acceptance $\hat\alpha$" + "\nper generation")
        a.set_title(title)
        if i == 0:
            sns.move_legend(a, "upper left", bbox_to_anchor=(1, 1), title="pair")
        elif a.get_legend() is not None:
            a.get_legend().remove()
    if len(panels) > 1:
        fig.tight_layout()
    return fig


def latency_cdfs(df: pd.DataFrame, pairs=None):
    """Per-token latency CDFs, autoregressive vs speculative at each K, one panel per pair
    (three panels a row, so the figure stays readable at page width). The time to first token
    is left out; tokens that arrive in the same round as the one before them have zero latency
    and show as the jump at the left edge."""
    cdf = analysis.latency_cdf(df)
    pairs = list(pairs) if pairs is not None else sorted(cdf.pair.unique())
    if not pairs:
        raise ValueError("no autoregressive or speculative generations in these results")
    labels = sorted(cdf.label.unique(), key=lambda l: (l != "autoregressive", int(l.split("=")[-1]) if "=" in l else 0))
    palette = dict(zip(labels, ["black"] + sns.color_palette("viridis", max(1, len(labels) - 1))))
    fig, axes = _grid(len(pairs), sharey=True)
    for ax, pair in zip(axes, pairs):
        sub = cdf[cdf.pair == pair].copy()
        floor = sub.latency_s[sub.latency_s > 0].min() / 2 if (sub.latency_s > 0).any() else 1e-6
        sub["latency_ms"] = sub.latency_s.clip(lower=floor) * 1e3
        order = [l for l in labels if l in set(sub.label)]
        sns.ecdfplot(data=sub, x="latency_ms", hue="label", hue_order=order, palette=palette, ax=ax,
                     log_scale=True, legend=False)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(pair, fontsize=10)
        ax.set_xlabel("gap before a token (ms)")
        ax.set_ylabel("fraction of tokens")
    handles = [plt.Line2D([], [], color=palette[l], lw=2) for l in labels]
    fig.legend(handles, [l.replace("speculative ", "") for l in labels], loc="lower center", ncol=len(labels),
               bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle("Per-token latency (zero-gap tokens of a round drawn at the left edge)", y=1.0)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def phase_breakdown(df: pd.DataFrame, pairs=None):
    """Stacked seconds per generated token in each phase (prefill, draft, verify, sample,
    overhead), the baseline (K = 0) and each K, one panel per pair (three a row)."""
    table = analysis.phase_breakdown(df)
    pairs = list(pairs) if pairs is not None else sorted(table.pair.unique())
    if not pairs:
        raise ValueError("no generations of our loops in these results")
    fig, axes = _grid(len(pairs))
    colors = dict(zip(analysis.PHASES, sns.color_palette("deep", len(analysis.PHASES))))
    for ax, pair in zip(axes, pairs):
        sub = table[table.pair == pair].sort_values("k")
        labels = ["AR" if k == 0 else f"K={k}" for k in sub.k]
        bottom = np.zeros(len(sub))
        for ph in analysis.PHASES:
            vals = sub[ph].fillna(0).to_numpy() * 1e3
            ax.bar(labels, vals, bottom=bottom, color=colors[ph], label=ph)
            bottom += vals
        ax.set_title(pair, fontsize=10)
        ax.set_ylabel("ms per generated token")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[ph]) for ph in analysis.PHASES]
    fig.legend(handles, analysis.PHASES, loc="lower center", ncol=len(analysis.PHASES), bbox_to_anchor=(0.5, -0.02),
               frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def measured_vs_predicted(df: pd.DataFrame, ax=None):
    """Measured decode speedup against the law's prediction from measured alpha and c (filled
    markers) and against the law with the verification priced as measured (open markers)."""
    mp = analysis.measured_vs_predicted(df)
    if mp.empty:
        raise ValueError("need speculative generations and their autoregressive baselines")
    fig, ax = _axes(ax, (6.5, 5))
    ax.errorbar(mp.predicted, mp.measured, yerr=[mp.measured - mp.measured_lo, mp.measured_hi - mp.measured],
                fmt="none", ecolor="grey", elinewidth=0.8, capsize=2, zorder=1)
    sns.scatterplot(data=mp, x="predicted", y="measured", hue="pair", style="k", s=70, ax=ax, zorder=2)
    for _, r in mp.iterrows():
        ax.scatter(r.predicted_verify, r.measured, facecolors="none", edgecolors="grey", s=70)
        ax.plot([r.predicted, r.predicted_verify], [r.measured, r.measured], color="grey", lw=0.6, alpha=0.6)
    hi = float(np.nanmax(mp[["predicted", "predicted_verify", "measured"]].to_numpy())) * 1.1
    lo = float(np.nanmin(mp[["predicted", "predicted_verify", "measured"]].to_numpy())) * 0.9
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted speedup\n(filled: law with measured α, c; open: verify cost as measured)")
    ax.set_ylabel("measured decode speedup (bars: range over repeats)")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize="small")
    return fig


def peer_comparison(df: pd.DataFrame):
    """Our speculative loop against the transformers method of the same pair, each over its own
    autoregressive baseline (top), and all four methods in decode tokens per second relative to
    our autoregressive loop (bottom). Bars are :func:`specdec.analysis.summarise` values (the median
    over repeats of the geometric mean over prompts), whiskers the range over repeats."""
    s = analysis.speedups(df)
    if s[s.method != "speculative"].empty:
        raise ValueError("no transformers generations (hf_assisted / hf_prompt_lookup) in these results")
    s = s[s.pair.isin(s[s.method != "speculative"].pair.unique())]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7.5))
    own = analysis.summarise(s.assign(label=s.pair + " / " + s.method).sort_values(["pair", "method"]),
                          ["label", "k"], "speedup")
    _bars(a1, own, "k", "speedup", "label")
    a1.axhline(1, color="k", lw=0.8)
    a1.set_ylabel("decode speedup over\nown autoregressive baseline")
    a1.set_xlabel("K")
    a1.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    rel = analysis.relative_to_ours(df)
    rank = {m: i for i, m in enumerate(analysis.METHODS)}
    rel = rel.assign(order=rel.method.map(rank) * 100 + rel.k).sort_values("order")
    hue_order = list(dict.fromkeys(rel.label))
    rel = analysis.summarise(rel, ["pair", "label"], "relative")
    _bars(a2, rel, "pair", "relative", "label", rotate=15, hue_order=hue_order)
    a2.axhline(1, color="k", lw=0.8)
    a2.set_ylabel("decode tokens/s relative\nto our autoregressive loop")
    a2.set_xlabel("pair")
    a2.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def _bars(ax, table: pd.DataFrame, x: str, y: str, hue: str, rotate: float = 0, hue_order=None) -> None:
    """Grouped bars of ``table[y]`` with whiskers from ``lo`` to ``hi``."""
    xs = sorted(dict.fromkeys(table[x]))
    hues = list(hue_order) if hue_order is not None else list(dict.fromkeys(table[hue]))
    width = 0.8 / max(1, len(hues))
    colors = sns.color_palette("deep", len(hues))
    for j, h in enumerate(hues):
        sub = table[table[hue] == h].set_index(x).reindex(xs)
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        ax.bar(pos, sub[y], width=width, color=colors[j], label=h)
        ax.errorbar(pos, sub[y], yerr=[sub[y] - sub.lo, sub.hi - sub[y]], fmt="none", ecolor="black", lw=0.8,
                    capsize=2)
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs], rotation=rotate, ha="right" if rotate else "center")
