"""What each choice of chapter 10's head buys: ablations trained on one budget (chapter 10).

:func:`run_ablations` trains, from the committed answers (and some reference text) and for the
same number of minutes each, the book's recipe and one change at a time:

* ``top layer only`` -- EAGLE-1's input: the target's last decoder layer instead of three fused;
* ``full vocabulary`` -- every one of the target's tokens in the draft vocabulary;
* ``LM-head rows trained`` -- the draft vocabulary's rows of the LM head trained with the rest;
* ``half the data``, ``a quarter of the data`` -- fewer training texts.

Each is evaluated on the same held-out answers (tau and first-step agreement,
:func:`specdec.headtrain.evaluate_head`) and timed in the loop's terms (one head step over one
target decode step, :func:`specdec.headbench.head_step_cost`), and the speedup law with this
machine's verify cost turns the two into a predicted speedup at K = 4.
``python -m specdec.headablate --out data/results/head_ablations.json`` records them.
"""

from __future__ import annotations

import torch

from .eagle import DRAFT_VOCAB

__all__ = ["VARIANTS", "run_ablations", "main"]

#: name -> (feature layers: "fused" or "top", draft vocabulary size or None for all, share of the texts,
#: whether the LM-head rows are trained too)
VARIANTS = {
    "book's recipe": ("fused", DRAFT_VOCAB, 1.0, False),
    "top layer only": ("top", DRAFT_VOCAB, 1.0, False),
    "full vocabulary": ("fused", None, 1.0, False),
    "LM-head rows trained": ("fused", DRAFT_VOCAB, 1.0, True),
    "half the data": ("fused", DRAFT_VOCAB, 0.5, False),
    "a quarter of the data": ("fused", DRAFT_VOCAB, 0.25, False),
}


def run_ablations(minutes_each: float = 5.0, reference_tokens: int = 50_000, k: int = 4, variants=None,
                  max_texts: int | None = None, progress: bool = True) -> dict:
    """Train and measure every variant of :data:`VARIANTS` (or the named ``variants``).

    ``max_texts`` caps the training texts (answers and reference text, drawn in one fixed random
    order) whose features are extracted: a variant trained for a few minutes sees only part of
    them, and extraction costs about as much as the training."""
    import numpy as np

    from .eagle import EagleHead, default_feature_layers
    from .fastpath import choose_path, prepare
    from .headbench import head_step_cost, verify_costs
    from .headanswers import load_answers
    from .headdata import draft_vocabulary, extract_features, reference_samples
    from .headtrain import TrainConfig, default_answers_path, evaluate_head, train_head
    from .loaders import load_smollm2
    from .prompts import stop_token_ids

    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    target, tokenizer = load_smollm2()
    stops = sorted(stop_token_ids(tokenizer, target))
    path, _ = choose_path(target)
    engine = prepare(target, path)
    answers, _ = load_answers(default_answers_path())
    held = [s for i, s in enumerate(answers) if i % 20 == 19]
    train = [s for i, s in enumerate(answers) if i % 20 != 19]
    extra = reference_samples(tokenizer, reference_tokens, progress=progress) if reference_tokens else []
    n_layers = len(target.model.layers)
    fused, top = default_feature_layers(n_layers), (n_layers - 1,)
    layers = tuple(sorted(set(fused) | set(top)))
    order = torch.randperm(len(train) + len(extra), generator=torch.Generator().manual_seed(0)).tolist()
    texts = train + extra
    if max_texts is not None:  # the first max_texts of the order, renumbered
        texts = [texts[i] for i in order[:max_texts]]
        order = list(range(len(texts)))
    all_fs = extract_features(engine, texts, layers, progress=progress)
    held_fs = extract_features(engine, held, layers, progress=progress)
    v = verify_costs(engine, ns=(1, k + 1))
    rows = []
    for name in names:
        which, vocab, share, train_rows = VARIANTS[name]
        use = fused if which == "fused" else top
        keep = sorted(order[: max(1, int(share * len(texts)))])
        fs = all_fs.with_layers(use).subset(keep)
        size = vocab or target.config.vocab_size
        ranked = draft_vocabulary(train, min(size, len({t for s in train for t in s.answer} | set(stops))),
                                  always=stops).tolist()
        if size > len(ranked):  # the whole vocabulary: the answers' tokens first, then the rest by id
            seen = set(ranked)
            ranked += [t for t in range(target.config.vocab_size) if t not in seen][: size - len(ranked)]
        head = EagleHead.for_target(target, torch.tensor(ranked), use, train_lm_rows=train_rows)
        history = train_head(head, fs, None, TrainConfig(epochs=1000, eval_every=10**9, max_seconds=60 * minutes_each),
                             progress=progress)
        ev = evaluate_head(head, held_fs.with_layers(use), steps=k)
        c = head_step_cost(head, engine)
        # the law with the measured verify cost: tokens per round over the round's cost in decode steps
        predicted = ev["tau"] / (v[k + 1] + k * c)
        rows.append(dict(variant=name, layers=list(use), draft_vocab=size, share=share, lm_rows_trained=train_rows,
                         train_tokens=int(history["tokens"].iloc[-1]), seconds=float(history["seconds"].iloc[-1]),
                         tau=ev["tau"], agree_1=ev["agree"][0], c=c, predicted_speedup=float(predicted)))
    return dict(rows=rows, verify_cost=v, k=k, minutes_each=minutes_each, reference_tokens=reference_tokens,
                n_train_texts=len(texts),
                path=path.label, n_held_out_texts=len(held), mean=float(np.mean([r["tau"] for r in rows])))


def main(argv=None) -> int:
    """``python -m specdec.headablate``: train the ablations of chapter 10's head and record them."""
    import shlex
    import sys

    from . import cli
    from .provenance import BusyMachineError, require_quiet, write_report

    ap = cli.ArgumentParser(prog="python -m specdec.headablate", description=main.__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON, e.g. data/results/head_ablations.json")
    ap.add_argument("--minutes", type=cli.float_range(0.0, 600.0, min_open=True), default=5.0,
                    help="training minutes per variant")
    ap.add_argument("--reference-tokens", type=cli.nonneg_int, default=50_000)
    ap.add_argument("--max-texts", type=cli.positive_int, help="train on at most this many texts")
    ap.add_argument("--variants", type=cli.name_list(list(VARIANTS), what="variant"),
                    help="comma-separated variants to train (default: all)")
    ap.add_argument("--force", action="store_true", help="record under data/results although the machine is busy")
    args = ap.parse_args(argv)
    try:
        load = require_quiet(args.out, args.force)
    except BusyMachineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    report = write_report(run_ablations(args.minutes, args.reference_tokens, variants=args.variants,
                                             max_texts=args.max_texts), args.out,
                          shlex.join(["python", "-m", "specdec.headablate", *(argv if argv is not None else sys.argv[1:])]),
                          load, args.force)
    for r in report["rows"]:
        print(f"{r['variant']:>22}: tau {r['tau']:.2f}, first-step agreement {r['agree_1']:.2f}, c {r['c']:.3f}, "
              f"predicted speedup {r['predicted_speedup']:.2f} ({r['train_tokens']:,} tokens trained)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
