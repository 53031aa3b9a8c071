"""What each choice of chapter 10's head buys: ablations on the same data and budget (chapter 10).

:func:`ablate` trains, from the same training texts and under the same budget (the same
:class:`specdec.headtrain.TrainConfig`: passes, early stop, minutes), the recipe and one change
at a time, each ``repeats`` times with different seeds:

* ``one unrolled step`` -- trained on real features only (no training-time test), drafted at the
  recipe's K all the same;
* ``feature regression`` -- EAGLE-1's SmoothL1 regression of the head's output onto the target's
  final hidden state, with feature noise;
* ``reference text added`` -- standard-library source and documentation the target did not
  write, added to its answers;
* ``half the data``, ``a quarter of the data`` -- fewer training texts (the tau-vs-tokens curve);
* ``top layer only`` -- EAGLE-1's input: the target's last decoder layer instead of three fused;
* ``full vocabulary`` -- every one of the target's tokens in the draft vocabulary;
* ``LM-head rows trained`` -- the draft vocabulary's rows of the LM head trained with the rest.

Each is evaluated on the same held-out answers (:func:`specdec.headloss.evaluate_head`), its
step timed in the loop's terms (:func:`specdec.headbench.head_step_cost`), and the law with this
machine's verify cost (:func:`specdec.theory.plan_drafting`) turns its acceptance by depth and
rank and its cost into the K it should draft and the speedup it predicts.
``python -m specdec.headablate --out data/results/head_ablations.json`` records them
(:func:`run_ablations` loads SmolLM2 and the committed answers).
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from .eagle import DRAFT_VOCAB

__all__ = ["VARIANTS", "CHAPTER_VARIANTS", "ablate", "summarise_ablations", "data_size_curve", "run_ablations",
           "main"]

#: name -> what changes from the recipe: ``layers`` ("fused" or "top"), ``vocab`` (None: all),
#: ``share`` of the training texts, ``steps`` unrolled (None: the recipe's), ``regression`` and
#: ``feature_noise`` weights, ``reference`` (add the reference text), ``lm_rows`` (train them)
RECIPE = dict(layers="fused", vocab=DRAFT_VOCAB, share=1.0, steps=None, regression=0.0, feature_noise=0.0,
              reference=False, lm_rows=False)
VARIANTS = {
    "book's recipe": {},
    "one unrolled step": dict(steps=1),
    "feature regression": dict(regression=1.0, feature_noise=0.2),
    "reference text added": dict(reference=True),
    "half the data": dict(share=0.5),
    "a quarter of the data": dict(share=0.25),
    "top layer only": dict(layers="top"),
    "full vocabulary": dict(vocab=None),
    "LM-head rows trained": dict(lm_rows=True),
}
#: the questions chapter 10 asks of its recipe (the default of ``python -m specdec.headablate``)
CHAPTER_VARIANTS = ("book's recipe", "one unrolled step", "feature regression", "reference text added",
                    "half the data", "a quarter of the data")


def ablate(target, engine, train_fs, held_fs, draft_vocabularies: dict, config, variants=None, repeats: int = 1,
           reference_fs=None, verify_cost: dict | None = None, fused=None, top=None, progress: bool = True,
           context: int = 256, done=(), on_row=None) -> list[dict]:
    """Train every variant of :data:`VARIANTS` (or the named ``variants``) ``repeats`` times.

    ``train_fs``, ``held_fs`` and ``reference_fs`` are feature sets holding the layers of both
    ``fused`` and ``top``; ``draft_vocabularies`` maps a size (None: the whole vocabulary) to the
    ``d2t`` to use; ``config`` is the budget every run shares (its ``steps`` the recipe's depth,
    also the K every variant is evaluated at); ``verify_cost`` (``{n: v(n)}``) turns each head's
    figures into the law's plan; a head step is timed after ``context`` tokens. Returns one row per
    (variant, repeat). Rows of ``done`` (an earlier run's, same budget) are kept, not trained
    again; ``on_row(row)`` is called with each new row as soon as it is made (to save it)."""
    import dataclasses

    from .eagle import EagleHead
    from .headbench import head_step_cost
    from .headdata import FeatureSet
    from .headloss import evaluate_head
    from .headtrain import train_head
    from .theory import plan_drafting

    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    k = config.k
    order = torch.randperm(len(train_fs), generator=torch.Generator().manual_seed(0)).tolist()
    rows, costs = [], {}
    for name in names:
        opt = RECIPE | VARIANTS[name]
        use = tuple(fused if opt["layers"] == "fused" else top)
        fs = train_fs.subset(sorted(order[: max(1, int(opt["share"] * len(train_fs)))]))
        if opt["reference"]:
            if reference_fs is None:
                raise ValueError(f"variant {name!r} needs reference text (reference_fs)")
            fs = FeatureSet.concat([fs, reference_fs])
        fs, held = fs.with_layers(use), held_fs.with_layers(use)
        cfg = dataclasses.replace(config, steps=opt["steps"] or config.steps, eval_k=k,
                                  regression=opt["regression"], feature_noise=opt["feature_noise"])
        for rep in range(repeats):
            earlier = [r for r in done if r["variant"] == name and r["repeat"] == rep]
            if earlier:
                rows.append(earlier[0])
                continue
            torch.manual_seed(rep)
            head = EagleHead.for_target(target, draft_vocabularies[opt["vocab"]], use, train_lm_rows=opt["lm_rows"])
            history = train_head(head, fs, held, dataclasses.replace(cfg, seed=rep), progress=progress)
            ev = evaluate_head(head, held, steps=k, ranks=8)
            key = (use, opt["vocab"], opt["lm_rows"])
            if key not in costs:  # one timing per head shape: the weights do not change its cost
                costs[key] = head_step_cost(head, engine, context=context)
            c = costs[key]
            row = dict(variant=name, repeat=rep, layers=list(use), draft_vocab=len(head.d2t), share=opt["share"],
                       steps=cfg.steps, regression=cfg.regression, feature_noise=cfg.feature_noise,
                       reference=opt["reference"], lm_rows_trained=opt["lm_rows"],
                       train_tokens=int(history["tokens"].iloc[-1]), train_answer_tokens=fs.n_answer_tokens,
                       optimizer_steps=int(history.attrs["steps_done"]), stopped_early=history.attrs["stopped_early"],
                       seconds=float(history["seconds"].iloc[-1]), tau=ev["tau"], agree=ev["agree"],
                       agree_1=ev["agree"][0], rank_acceptance=ev["rank_acceptance"], c=c)
            if verify_cost is not None:
                plan = plan_drafting(ev["rank_acceptance"], verify_cost, c, k_max=k)
                row.update(best_k=plan["chain"]["k"], predicted_speedup=float(plan["chain"]["speedup"]),
                           predicted_tree_speedup=float(plan["tree"]["speedup"]),
                           predicted_speedup_at_k=float(plan["chains"].loc[k, "speedup"]))
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def summarise_ablations(rows: list[dict], figures=("tau", "agree_1", "predicted_speedup")) -> list[dict]:
    """Per variant (in the order of ``rows``): the median of each figure over repeats, with its
    smallest and largest value."""
    out = {}
    for r in rows:
        out.setdefault(r["variant"], []).append(r)
    summary = []
    for name, rs in out.items():
        row = dict(variant=name, repeats=len(rs), train_answer_tokens=rs[0]["train_answer_tokens"])
        for f in figures:
            vals = [r[f] for r in rs if f in r]
            if vals:
                row.update({f: statistics.median(vals), f"{f}_lo": min(vals), f"{f}_hi": max(vals)})
        summary.append(row)
    return summary


#: the variants that differ from the recipe only in the share of the training texts they see
DATA_SIZE_VARIANTS = ("a quarter of the data", "half the data", "book's recipe")


def data_size_curve(summary: list[dict], book: dict | None = None, figure: str = "tau",
                    goal: float | None = None) -> dict:
    """``figure`` against the answer tokens trained on: the data-size variants of ``summary``
    (:func:`summarise_ablations`: median, lo, hi) and, where given, the book's head evaluated on
    the same held-out texts (``book``: ``train_answer_tokens`` and the figure; trained on more
    data, under its own budget). A least-squares line in log10(tokens) through the points
    extrapolates: ``slope`` per tenfold of data, and with ``goal`` the tokens where the line
    reaches it (None where it never does)."""
    import pandas as pd

    pts = [dict(label=r["variant"], tokens=r["train_answer_tokens"], value=r[figure], lo=r.get(f"{figure}_lo"),
                hi=r.get(f"{figure}_hi")) for r in summary if r["variant"] in DATA_SIZE_VARIANTS]
    if book is not None:
        pts.append(dict(label="the book's head", tokens=book["train_answer_tokens"], value=book[figure], lo=None,
                        hi=None))
    df = pd.DataFrame(pts).sort_values("tokens").reset_index(drop=True)
    if len(df) < 2:
        raise ValueError("need at least two data sizes to draw a curve")
    slope, intercept = np.polyfit(np.log10(df["tokens"].astype(float)), df["value"].astype(float), 1)
    crossing = None
    if goal is not None and slope > 0:
        crossing = float(10 ** ((goal - intercept) / slope))
    return dict(points=df, slope=float(slope), intercept=float(intercept), goal=goal, goal_tokens=crossing)


def book_head_point(target, held_fs, steps: int) -> dict | None:
    """The book's committed head (:func:`specdec.eagle.load_book_head`) evaluated on ``held_fs``
    at ``steps`` drafts -- the data-size curve's largest point; None where no head is committed.
    Its held-out texts contain these (the split keeps the first parts' held-out texts), so it
    never trained on them."""
    import json

    from .eagle import book_head_dir, head_available, load_book_head
    from .headloss import evaluate_head

    if not head_available():
        return None
    head = load_book_head(target)
    prov = json.loads((book_head_dir() / "head.json").read_text())["provenance"]
    ev = evaluate_head(head, held_fs.with_layers(head.cfg.feature_layers), steps=steps, ranks=8)
    return dict(train_answer_tokens=prov["n_train_answer_tokens"], answer_parts=prov.get("answer_parts"),
                train_seconds=prov.get("train_seconds"), tau=ev["tau"], agree=ev["agree"], agree_1=ev["agree"][0],
                rank_acceptance=ev["rank_acceptance"], commit=prov.get("commit"))


def run_ablations(variants=CHAPTER_VARIANTS, repeats: int = 3, epochs: float = 4.0, patience: int = 6,
                  eval_every: int = 200, minutes_each: float | None = None, steps: int = 5,
                  max_parts: int | None = None, reference_tokens: int = 250_000, progress: bool = True,
                  rows_file=None) -> dict:
    """Load SmolLM2 and its fastest path, the committed answers (the first ``max_parts`` parts),
    their features (cached per part) for the fused and the top layers, the reference text
    where a variant needs it, measure v(n) here, and :func:`ablate` every variant under one
    budget: ``epochs`` passes with an early stop after ``patience`` evaluations without a better
    held-out tau, at most ``minutes_each`` minutes, ``steps`` unrolled steps for the recipe, in
    the training precision measured faster here (:func:`specdec.headtrain.measure_precisions`).

    With ``rows_file`` (JSON lines) every finished run is appended there at once, and the runs
    it already holds with the same budget and data are not trained again: a stopped sweep goes
    on where it stopped."""
    import dataclasses
    import json
    from pathlib import Path

    from .eagle import EagleHead, default_feature_layers
    from .fastpath import choose_path, prepare
    from .headanswers import answer_parts
    from .headdata import cached_features, cached_layers, draft_vocabulary, feature_cache_key, reference_samples
    from .headtrain import TrainConfig, measure_precisions, split_held_out
    from .loaders import load_smollm2
    from .prompts import stop_token_ids
    from .steptime import verify_costs

    names = list(VARIANTS) if variants is None else list(variants)
    target, tokenizer = load_smollm2()
    stops = sorted(stop_token_ids(tokenizer, target))
    path, _ = choose_path(target)
    engine = prepare(target, path)
    parts = answer_parts(max_parts=max_parts)
    samples = [s for _, part, _ in parts for s in part]
    train, held = split_held_out(samples)
    n_layers = len(target.model.layers)
    fused, top = default_feature_layers(n_layers), (n_layers - 1,)
    layers = cached_layers(n_layers)  # the same cache as the book's head
    key = feature_cache_key(target, path)
    everything = cached_features(engine, [(name, part) for name, part, _ in parts], layers, key, progress=progress)
    index = {id(s): i for i, s in enumerate(samples)}
    train_fs = everything.subset([index[id(s)] for s in train])
    held_fs = everything.subset([index[id(s)] for s in held])
    reference_fs = None
    if any((RECIPE | VARIANTS[n])["reference"] for n in names) and reference_tokens:
        extra = reference_samples(tokenizer, reference_tokens, progress=progress)
        reference_fs = cached_features(engine, [(f"reference-{reference_tokens}", extra)], layers, key,
                                       progress=progress)
    vocabularies = {DRAFT_VOCAB: draft_vocabulary(train, DRAFT_VOCAB, always=stops)}
    if any((RECIPE | VARIANTS[n])["vocab"] is None for n in names):
        ranked = draft_vocabulary(train, len({t for s in train for t in s.answer} | set(stops)), always=stops).tolist()
        seen = set(ranked)
        vocabularies[None] = torch.tensor(ranked + [t for t in range(target.config.vocab_size) if t not in seen])
    v = verify_costs(engine, ns=tuple(range(1, steps + 2)) + (9, 17, 33))
    config = TrainConfig(epochs=epochs, steps=steps, patience=patience, eval_every=eval_every,
                         max_seconds=None if minutes_each is None else 60 * minutes_each)
    settings = dict(dataclasses.asdict(config), answer_parts=len(parts), n_train_texts=len(train_fs),
                    reference_tokens=reference_tokens)
    done = []
    if rows_file is not None and Path(rows_file).is_file():
        done = [r for r in map(json.loads, Path(rows_file).read_text().splitlines()) if r.get("settings") == settings]
    if done:
        config = dataclasses.replace(config, precision=done[0]["precision"])
        rates = None
    else:
        recipe = EagleHead.for_target(target, vocabularies[DRAFT_VOCAB], fused)
        rates = measure_precisions(recipe, train_fs.with_layers(fused), config)
        config = dataclasses.replace(config, precision=max(rates, key=rates.get))

    def save(row):
        if rows_file is not None:
            Path(rows_file).parent.mkdir(parents=True, exist_ok=True)
            with open(rows_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(dict(row, settings=settings, precision=config.precision), default=float) + "\n")

    rows = ablate(target, engine, train_fs, held_fs, vocabularies, config, names, repeats, reference_fs, v, fused,
                  top, progress, done=done, on_row=save)

    return dict(rows=rows, summary=summarise_ablations(rows), book_head=book_head_point(target, held_fs, steps),
                verify_cost=v, k=steps, path=path.label,
                precision=config.precision, precision_tokens_per_s=rates,
                budget=dataclasses.asdict(config), answer_parts=len(parts), n_train_texts=len(train_fs),
                n_train_answer_tokens=train_fs.n_answer_tokens, n_held_out_texts=len(held_fs),
                reference_tokens=reference_tokens if reference_fs is not None else 0, repeats=repeats)


def main(argv=None) -> int:
    """``python -m specdec.headablate``: train the ablations of chapter 10's head and record them."""
    import shlex
    import sys
    from pathlib import Path

    from . import cli
    from .provenance import BusyMachineError, require_quiet, write_report

    ap = cli.ArgumentParser(prog="python -m specdec.headablate", description=main.__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON, e.g. data/results/head_ablations.json (each finished "
                                  "run goes to OUT's .rows.jsonl at once; a second run goes on from there)")
    ap.add_argument("--variants", type=cli.name_list(list(VARIANTS), what="variant"),
                    help=f"comma-separated variants to train (default: {', '.join(CHAPTER_VARIANTS)})")
    ap.add_argument("--repeats", type=cli.positive_int, default=3, help="seeds per variant")
    ap.add_argument("--epochs", type=cli.float_range(0.0, 1000.0, min_open=True), default=4.0,
                    help="passes over the training text the schedule spans (the same for every variant)")
    ap.add_argument("--patience", type=cli.positive_int, default=6,
                    help="evaluations without a better held-out tau before a run stops")
    ap.add_argument("--eval-every", type=cli.positive_int, default=200)
    ap.add_argument("--minutes", type=cli.float_range(0.0, 6000.0, min_open=True),
                    help="at most this many minutes of training per run")
    ap.add_argument("--steps", type=cli.int_range(1, 8), default=5, help="the recipe's unrolled steps (and K)")
    ap.add_argument("--answer-parts", type=cli.positive_int, help="use only the first parts of the answers")
    ap.add_argument("--reference-tokens", type=cli.nonneg_int, default=250_000)
    ap.add_argument("--force", action="store_true", help="record under data/results although the machine is busy")
    args = ap.parse_args(argv)
    try:
        load = require_quiet(args.out, args.force)
    except BusyMachineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    rows_file = None if args.out is None else Path(args.out).with_suffix(".rows.jsonl")
    report = write_report(run_ablations(args.variants or CHAPTER_VARIANTS, args.repeats, args.epochs, args.patience,
                                        args.eval_every, args.minutes, args.steps, args.answer_parts,
                                        args.reference_tokens, rows_file=rows_file),
                          args.out,
                          shlex.join(["python", "-m", "specdec.headablate", *(argv if argv is not None else sys.argv[1:])]),
                          load, args.force)
    for r in report["summary"]:
        print(f"{r['variant']:>22}: tau {r['tau']:.2f} [{r['tau_lo']:.2f}-{r['tau_hi']:.2f}], first-draft agreement "
              f"{r['agree_1']:.2f}, predicted speedup {r.get('predicted_speedup', float('nan')):.2f} "
              f"({r['train_answer_tokens']:,} answer tokens, {r['repeats']} repeats)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
