"""The benchmark figures: each takes a results frame and returns the figure it drew."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from specdec import analysis, plots

from .helpers import make_results


@pytest.fixture
def df():
    return analysis.load_results(make_results())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_speedup_heatmap_shows_each_pair_and_k(df):
    fig = plots.speedup_heatmap(df)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pairA", "pairB"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2"]
    # the annotated decode speedups, (9 / 0.8) / (9 / 1.8); one repeat, so no range beneath them
    assert sorted(t.get_text() for t in ax.texts) == ["2.25", "2.25"]


def test_heatmap_shows_the_range_over_repeats():
    import copy

    rows = make_results()
    slower = []
    for r in rows:  # a second repeat in which every speculative generation took twice as long
        r2 = copy.deepcopy(r)
        r2.meta["repeat"] = 1
        if r2.method == "speculative":
            r2.total_s, r2.ttft_s = 2 * r2.total_s - r2.ttft_s, r2.ttft_s
        slower.append(r2)
    fig = plots.speedup_heatmap(analysis.load_results(rows + slower))
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    lo, hi = 1.8 / 1.6, 1.8 / 0.8  # speculative decode: 1.6 s in the slow repeat, 0.8 s in the fast one
    median = (lo + hi) / 2
    assert texts == [f"{median:.2f}\n{lo:.2f}–{hi:.2f}"] * 2


def _at_temperature_one(rows):
    """The same generations again at temperature 1, ours only."""
    import copy

    sampled = []
    for r in rows:
        if r.method.startswith("hf_"):
            continue
        r2 = copy.deepcopy(r)
        cfg = analysis.BenchmarkConfig.from_dict({**r2.meta["config"], "temperature": 1.0})
        r2.meta.update(config=cfg.to_dict(), config_hash=cfg.config_hash)
        sampled.append(r2)
    return sampled


def test_heatmap_has_a_row_per_temperature_when_the_file_holds_several():
    rows = make_results()
    sampled = _at_temperature_one(rows)
    fig = plots.speedup_heatmap(analysis.load_results(rows + sampled))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["pairA, T = 1", "pairA, greedy", "pairB, T = 1", "pairB, greedy"]


def test_acceptance_has_a_panel_per_temperature_when_the_file_holds_several():
    rows = make_results()
    sampled = _at_temperature_one(rows)
    fig = plots.acceptance_distributions(analysis.load_results(rows + sampled))
    assert [a.get_title() for a in fig.axes] == ["greedy", "T = 1"]
    assert all(len(a.collections) > 0 for a in fig.axes)


def test_figures_draw_into_a_given_axes(df):
    fig, ax = plt.subplots()
    assert plots.speedup_heatmap(df, ax=ax) is fig
    fig2, ax2 = plt.subplots()
    assert plots.acceptance_distributions(df, ax=ax2) is fig2
    assert len(ax2.collections) > 0  # the strip plot's points


@pytest.mark.parametrize("name, n_panels", [("latency_cdfs", 2), ("phase_breakdown", 2)])
def test_one_panel_per_pair(df, name, n_panels):
    fig = getattr(plots, name)(df)
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["pairA", "pairB"][:n_panels]
    assert all(a.has_data() for a in axes)


def test_phase_bars_add_up_to_time_per_token(df):
    fig = plots.phase_breakdown(df, pairs=["pairA"])
    ax = fig.axes[0]
    tops = {}
    for bar in ax.patches:
        x = round(bar.get_x(), 6)
        tops[x] = max(tops.get(x, 0), bar.get_y() + bar.get_height())
    # autoregressive: 2.0 s / 10 tokens; speculative: 1.0 s / 10 tokens (in ms)
    assert sorted(tops.values()) == pytest.approx([100.0, 200.0])


def test_measured_vs_predicted_and_peers(df):
    fig = plots.measured_vs_predicted(df)
    assert isinstance(fig, Figure) and fig.axes[0].has_data()
    fig = plots.peer_comparison(df)
    assert len(fig.axes) >= 2 and all(a.has_data() for a in fig.axes[:2])


def test_plots_refuse_frames_without_the_data_they_need(df):
    ar_only = df[df.method == "autoregressive"]
    with pytest.raises(ValueError):
        plots.speedup_heatmap(ar_only)
    with pytest.raises(ValueError):
        plots.acceptance_distributions(ar_only)
    with pytest.raises(ValueError, match="transformers"):
        plots.peer_comparison(df[~df.method.str.startswith("hf")])
