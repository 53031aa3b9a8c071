"""Training chapter 10's draft head on the target's own text (self-distillation).

The data come from :mod:`specdec.headdata` (the target's answers to training prompts and its
features on them), the loss and the held-out figures from :mod:`specdec.headloss`. Here:

* :class:`TrainConfig` and :func:`train_head` -- AdamW with warm-up and a cosine schedule sized
  to the data, an early stop on a plateau of held-out tau, checkpoints to resume from, a
  progress bar, and a history of held-out figures.
* :func:`measure_precisions` -- whether bfloat16 training passes are faster on this machine.
* :func:`build_head` and ``python -m specdec.headtrain`` -- the whole recipe for SmolLM2, from
  the committed answers to a saved head with its provenance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .headdata import FeatureSet
from .headloss import batches_by_length, evaluate_head, feature_batch, head_loss

__all__ = ["PRECISIONS", "TrainConfig", "train_head", "measure_precisions", "build_head", "main"]


#: what the training passes may compute in: float32, or bfloat16 matrix products under autocast
#: (the weights, the optimiser and every evaluation stay float32)
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train: token budget per batch, passes, optimiser, unrolled steps,
    the loss's options, when to stop and how often to save a checkpoint.

    The learning rate warms up for ``warmup`` steps and then follows a cosine over ``epochs``
    passes of the training texts -- a schedule sized to the data. Training stops earlier when
    the held-out tau has not improved by ``min_delta`` for ``patience`` evaluations (a
    plateau; ``None``: never), and the head keeps the weights of its best evaluation."""

    epochs: float = 1.0
    batch_tokens: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 20
    steps: int = 3  # draft steps unrolled (training-time test)
    decay: float = 0.8  # weight of each later step
    regression: float = 0.0  # weight of EAGLE-1's feature regression (0: none)
    feature_noise: float = 0.0  # width of the uniform noise added to the target's features
    eval_every: int = 50
    eval_k: int | None = None  # draft length of the held-out tau (default: steps)
    patience: int | None = None  # evaluations without a better held-out tau before stopping
    min_delta: float = 0.002
    seed: int = 0
    precision: str = "float32"  # of the training passes ("bfloat16": autocast; "auto": build_head measures)
    max_seconds: float | None = None  # this run stops at its first evaluation after so many seconds
    checkpoint_seconds: float = 600.0  # how often a checkpoint is written, when there is a path

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_tokens < 1 or self.lr <= 0 or self.steps < 1:
            raise ValueError("epochs, batch_tokens, lr and steps must be positive")
        if self.eval_k is not None and self.eval_k < 1:
            raise ValueError("eval_k must be positive")
        if self.regression < 0 or self.feature_noise < 0 or (self.patience is not None and self.patience < 1):
            raise ValueError("regression and feature_noise must be >= 0, patience >= 1")
        if self.precision not in PRECISIONS + ("auto",):
            raise ValueError(f"precision must be one of {PRECISIONS + ('auto',)}, got {self.precision!r}")

    @property
    def k(self) -> int:
        return self.steps if self.eval_k is None else self.eval_k


def train_head(head, train: FeatureSet, held_out: FeatureSet | None = None, config: TrainConfig = TrainConfig(),
               progress: bool = True, checkpoint=None) -> "pd.DataFrame":
    """Train ``head`` in place; returns the history (one row per evaluation: optimiser step,
    training tokens seen, seconds, training loss, held-out loss, tau and acceptance).

    With ``checkpoint`` (a path) the state of training -- the head, the optimiser, the
    schedule, the order of the batches and where in it training is, the history, the best
    weights so far -- is written there every ``config.checkpoint_seconds`` and when training
    stops (also on Ctrl-C), and a run that finds a checkpoint made with the same settings
    carries on from it: a stopped run loses at most the minutes since the last one. With a
    patience, the head ends with the weights of its best held-out tau."""
    import copy
    import dataclasses

    import pandas as pd

    if not len(train):
        raise ValueError("no training texts")
    if config.precision == "auto":
        raise ValueError("choose the precision first (measure_precisions, or build_head does)")
    g = torch.Generator().manual_seed(config.seed)
    device = head.d2t.device
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = batches_by_length(train, config.batch_tokens, g)
    total = max(1, math.ceil(config.epochs * len(per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    rows, seen, recent = [], 0, []
    step, pos, best, best_state, since_best = 0, 0, -math.inf, None, 0
    settings = dict(dataclasses.asdict(config), max_seconds=None, checkpoint_seconds=None, n_train=len(train),
                    n_train_tokens=train.n_answer_tokens)
    elapsed0 = 0.0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["settings"] != settings:
            raise ValueError(f"{checkpoint} was made with other settings or data; remove it to start afresh "
                             f"(it: {state['settings']}, now: {settings})")
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["rng"])  # the feature noise's draws
        per_epoch, pos, step, seen = state["batches"], state["pos"], state["step"], state["seen"]
        rows, best, best_state, since_best = state["history"], state["best"], state["best_state"], state["since_best"]
        if state.get("best_is_head"):  # saved once, not twice
            best_state = copy.deepcopy(state["head"])
        elapsed0 = state["seconds"]
    t0 = time.perf_counter() - elapsed0
    k = config.k
    evaluates = held_out is not None and len(held_out) > 0

    def save():
        if checkpoint is None:
            return
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(checkpoint) + ".partial")
        weights = head.state_dict()
        # when the best weights are the current ones (training stopped right after its best
        # evaluation), they are stored once: the checkpoint stays a third smaller
        same = best_state is not None and all(torch.equal(best_state[k], v) for k, v in weights.items())
        torch.save(dict(settings=settings, head=weights, optimizer=opt.state_dict(), schedule=sched.state_dict(),
                        generator=g.get_state(), rng=torch.get_rng_state(), batches=per_epoch, pos=pos, step=step,
                        seen=seen, history=rows, best=best, best_state=None if same else best_state,
                        best_is_head=same, since_best=since_best, seconds=time.perf_counter() - t0,
                        done=step >= total or stopped), tmp)
        tmp.replace(checkpoint)

    def record(step):
        nonlocal best, best_state, since_best
        row = dict(step=step, tokens=seen, seconds=time.perf_counter() - t0, lr=sched.get_last_lr()[0],
                   train_loss=float(sum(recent) / len(recent)) if recent else math.nan)
        if held_out is not None and len(held_out):
            ev = evaluate_head(head, held_out, steps=k, batch_tokens=config.batch_tokens)
            row.update(held_out_loss=ev["loss"], tau=ev["tau"], accept_1=ev["agree"][0],
                       expected_accept_1=ev["accept"][0])
            if ev["tau"] > best + config.min_delta:
                best, since_best = ev["tau"], 0
                best_state = copy.deepcopy(head.state_dict()) if config.patience is not None else None
            else:
                since_best += 1
        rows.append(row)
        recent.clear()
        return row

    stopped = False
    head.train()
    if not rows:
        head.eval()
        record(0)
        head.train()
    bar = tqdm(total=total, initial=step, desc="training", disable=not progress)
    last_save = time.perf_counter()
    try:
        while step < total and not stopped:
            if pos >= len(per_epoch):
                per_epoch, pos = batches_by_length(train, config.batch_tokens, g), 0
            idx = per_epoch[pos]
            pos += 1
            batch = feature_batch(train, idx, config.steps, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"):
                loss, stats = head_loss(head, batch, config.steps, config.decay, config.regression,
                                        config.feature_noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            seen += int(stats[0]["mask"].sum())
            recent.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{recent[-1]:.3f}")
            out_of_time = config.max_seconds is not None and time.perf_counter() - t0 - elapsed0 > config.max_seconds
            # out of time, a run stops at its next evaluation, not between two: an extra one
            # would change which weights are best, and a resumed run would differ from a whole one
            at_eval = step % config.eval_every == 0 or step == total or (out_of_time and not evaluates)
            if at_eval:
                head.eval()
                record(step)
                head.train()
                if config.patience is not None and since_best >= config.patience:
                    stopped = True
            if out_of_time and at_eval:
                break
            if time.perf_counter() - last_save > config.checkpoint_seconds:
                save()
                last_save = time.perf_counter()
    finally:
        bar.close()
        save()
    head.eval()
    done = step >= total or stopped
    if best_state is not None and done:
        head.load_state_dict(best_state)
    history = pd.DataFrame(rows)
    history.attrs.update(total_steps=total, steps_done=step, stopped_early=stopped, done=done, best_tau=best)
    return history


def measure_precisions(head, fs: FeatureSet, config: TrainConfig, n_batches: int = 4, repeats: int = 2) -> dict:
    """Training passes per second (padded tokens, forward and backward, on the first
    ``n_batches`` batches of ``fs``) in each of :data:`PRECISIONS`, interleaved ``repeats`` times
    after one warm-up round, on a copy of ``head``: ``{precision: median tokens/s}``. Whether
    bfloat16 is faster depends on the CPU's units, so it is measured, not assumed."""
    import copy
    import statistics

    trial = copy.deepcopy(head).train()
    rng = torch.get_rng_state()  # the feature noise draws from it; training's draws stay the same
    batches = batches_by_length(fs, config.batch_tokens, torch.Generator().manual_seed(config.seed))[:n_batches]
    data = [feature_batch(fs, idx, config.steps, head.d2t.device) for idx in batches]
    n_tokens = sum(b[0].shape[0] * b[0].shape[1] for b in data)
    rates = {p: [] for p in PRECISIONS}
    for r in range(repeats + 1):
        for precision in PRECISIONS:
            t = time.perf_counter()
            for b in data:
                with torch.autocast(head.d2t.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                    loss, _ = head_loss(trial, b, config.steps, config.decay, config.regression, config.feature_noise)
                loss.backward()
                trial.zero_grad(set_to_none=True)
            if r:
                rates[precision].append(n_tokens / (time.perf_counter() - t))
    torch.set_rng_state(rng)
    return {p: statistics.median(v) for p, v in rates.items()}


# -- the whole recipe ------------------------------------------------------------------------


def default_answers_path():
    """Where the target's answers to the training prompts are kept (:func:`specdec.headanswers.answers_dir`)."""
    from .headanswers import answers_dir

    return answers_dir()


def split_held_out(samples: list, every: int = 20) -> tuple[list, list]:
    """``(train, held_out)``: every ``every``-th text (counting from the first part, so the split
    of the texts already there does not change as parts are added) is held out."""
    return ([s for i, s in enumerate(samples) if i % every != every - 1],
            [s for i, s in enumerate(samples) if i % every == every - 1])


def build_head(target, tokenizer, answers=None, max_parts: int | None = None, draft_vocab: int | None = None,
               feature_layers=None, held_out_every: int = 20, config: TrainConfig = TrainConfig(),
               reference_tokens: int = 0, checkpoint=None, cache_dir=None, progress: bool = True, log=print):
    """The target's answers to a trained head, each stage resuming from what an earlier run saved:

    1. the answers: every part of ``answers`` (a folder, :func:`default_answers_path`; the first
       ``max_parts``), made by ``python -m specdec.headanswers``; every ``held_out_every``-th
       text is held out for the curves and the planner's acceptance tables;
    2. the draft vocabulary (:func:`specdec.headdata.draft_vocabulary` of the training answers);
    3. ``reference_tokens`` of text the target did not write
       (:func:`specdec.headdata.reference_samples`), for training only;
    4. the features, per part, on the target's fastest path here (the path the loop runs it
       on), kept in ``cache_dir`` (:func:`specdec.headdata.cached_features`);
    5. training (:func:`train_head`), with a ``checkpoint`` to resume from.

    Returns ``(head, history, info)``; ``info`` holds the counts and the seconds of each stage."""
    from .eagle import DRAFT_VOCAB, EagleHead
    from .fastpath import choose_path, prepare
    from .headanswers import answer_parts
    from .headdata import cached_features, cached_layers, draft_vocabulary, feature_cache_key, reference_samples
    from .prompts import stop_token_ids

    info, t = {}, time.perf_counter()
    parts = answer_parts(answers, max_parts)
    samples = [s for _, part, _ in parts for s in part]
    info.update(answer_parts=len(parts), answer_seconds=sum(m.get("seconds") or 0.0 for _, _, m in parts))
    log(f"answers: {len(samples):,} texts in {len(parts)} part(s)")
    stops = stop_token_ids(tokenizer, target)
    path, _ = choose_path(target)
    engine = prepare(target, path)
    info["path"] = path.label
    train, held = split_held_out(samples, held_out_every)
    d2t = draft_vocabulary(train, DRAFT_VOCAB if draft_vocab is None else draft_vocab, always=sorted(stops))
    head = EagleHead.for_target(target, d2t, feature_layers)
    layers = head.cfg.feature_layers
    n_layers = target.config.num_hidden_layers
    cached = tuple(sorted(set(cached_layers(n_layers)) | set(layers)))
    key = feature_cache_key(target, path)
    t = time.perf_counter()
    groups = [(name, part) for name, part, _ in parts]
    cache_stats: dict = {}
    everything = cached_features(engine, groups, cached, key, cache_dir, progress, keep=layers, stats=cache_stats)
    index = {id(s): i for i, s in enumerate(samples)}
    train_fs = everything.subset([index[id(s)] for s in train])
    held_fs = everything.subset([index[id(s)] for s in held])
    n_answer_tokens = train_fs.n_answer_tokens
    if reference_tokens:
        extra = reference_samples(tokenizer, reference_tokens, progress=progress)
        info["n_reference_tokens"] = sum(len(s.answer) for s in extra)
        from .headdata import FeatureSet

        train_fs = FeatureSet.concat([train_fs, cached_features(engine, [(f"reference-{reference_tokens}", extra)],
                                                               cached, key, cache_dir, progress, keep=layers)])
    info["feature_seconds"] = time.perf_counter() - t
    info["feature_cache"] = cache_stats  # groups loaded from the cache or extracted, and the extraction's seconds
    if config.precision == "auto":  # the precision of a checkpoint's run, else the faster one here
        import dataclasses

        prior = torch.load(checkpoint, weights_only=False)["settings"]["precision"] \
            if checkpoint is not None and Path(checkpoint).is_file() else None
        if prior is None:
            info["precision_tokens_per_s"] = rates = measure_precisions(head, train_fs, config)
            log("training passes, padded tokens/s: " + ", ".join(f"{p} {r:.0f}" for p, r in rates.items()))
        config = dataclasses.replace(config, precision=prior or max(rates, key=rates.get))
    info["precision"] = config.precision
    t = time.perf_counter()
    history = train_head(head, train_fs, held_fs, config, progress=progress, checkpoint=checkpoint)
    info["train_seconds_this_run"] = time.perf_counter() - t
    info["train_seconds"] = float(history["seconds"].iloc[-1])  # every run since the first step, evaluations included
    info["held_out_eval"] = evaluate_head(head, held_fs, steps=config.k, by_domain=True, ranks=8)
    info.update(n_train_texts=len(train_fs), n_held_out_texts=len(held), n_train_answer_tokens=n_answer_tokens,
                n_train_tokens=train_fs.n_answer_tokens, n_held_out_answer_tokens=held_fs.n_answer_tokens,
                draft_vocab=len(d2t), feature_layers=list(layers), **history.attrs)
    return head, history, info


def main(argv=None) -> int:
    """``python -m specdec.headtrain``: train the book's head on SmolLM2 from the committed answers and save it."""
    import dataclasses
    import shlex
    import sys

    from . import cli
    from .eagle import DRAFT_VOCAB, book_head_dir, save_head
    from .loaders import load_smollm2
    from .provenance import load_average, provenance, repo_relative

    ap = cli.ArgumentParser(prog="python -m specdec.headtrain", description=main.__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(book_head_dir()), help="folder for head.safetensors, head.json, history.csv")
    ap.add_argument("--answers", default=str(default_answers_path()), help="folder of the target's answers (parts)")
    ap.add_argument("--answer-parts", type=cli.positive_int, help="read only the first parts (default: all)")
    ap.add_argument("--draft-vocab", type=cli.int_range(16, 49152), default=DRAFT_VOCAB)
    ap.add_argument("--epochs", type=cli.float_range(0.0, 1000.0, min_open=True), default=1.0,
                    help="passes over the training text the learning-rate schedule spans")
    ap.add_argument("--steps", type=cli.int_range(1, 8), default=5,
                    help="draft steps unrolled in training (the longest chain the loop will draft)")
    ap.add_argument("--lr", type=cli.float_range(0.0, 1.0, min_open=True), default=1e-3)
    ap.add_argument("--regression", type=cli.float_range(0.0, 100.0), default=0.0,
                    help="weight of the feature-regression term (EAGLE-1); 0: none")
    ap.add_argument("--feature-noise", type=cli.float_range(0.0, 10.0), default=0.0,
                    help="width of the uniform noise added to the target's features")
    ap.add_argument("--patience", type=cli.positive_int, default=6,
                    help="evaluations without a better held-out tau before training stops")
    ap.add_argument("--eval-every", type=cli.positive_int, default=200, help="optimiser steps between evaluations")
    ap.add_argument("--max-minutes", type=cli.float_range(0.0, 10_000.0, min_open=True),
                    help="stop this run's training at its first evaluation after this many minutes (a checkpoint "
                         "lets the next run go on)")
    ap.add_argument("--reference-tokens", type=cli.nonneg_int, default=0,
                    help="tokens of standard-library source and documentation added to the training text")
    ap.add_argument("--precision", choices=PRECISIONS + ("auto",), default="auto",
                    help="of the training passes; auto: the faster one measured here (or the checkpoint's)")
    ap.add_argument("--checkpoint", help="training checkpoint, read and written (default: OUT/checkpoint.pt)")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "-m", "specdec.headtrain", *(argv if argv is not None else sys.argv[1:])])
    record = provenance(command=command)
    record["load_average_start"] = load_average()
    target, tokenizer = load_smollm2()
    config = TrainConfig(epochs=args.epochs, steps=args.steps, lr=args.lr, regression=args.regression,
                         feature_noise=args.feature_noise, patience=args.patience, eval_every=args.eval_every,
                         precision=args.precision,
                         max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(args.out) / "checkpoint.pt"
    head, history, info = build_head(target, tokenizer, args.answers, args.answer_parts, args.draft_vocab,
                                     config=config, reference_tokens=args.reference_tokens, checkpoint=checkpoint)
    if not history.attrs["done"]:
        last = history.iloc[-1]
        print(f"training stopped at step {int(last['step'])} (held-out tau {last['tau']:.2f}); the checkpoint "
              f"{repo_relative(checkpoint)} holds it: run the same command again to go on")
        return 0
    config = dataclasses.replace(config, precision=info["precision"])
    record.update(info, train_config=dataclasses.asdict(config), load_average_end=load_average(),
                  held_out=history.iloc[-1].to_dict(), checkpoint=repo_relative(checkpoint))
    out = save_head(head, args.out, provenance=record)
    history.to_csv(out / "history.csv", index=False)
    ev = info["held_out_eval"]
    print(f"head saved in {repo_relative(out)}: held-out tau {ev['tau']:.2f} (K={config.k}), first-draft agreement "
          f"{ev['agree'][0]:.2f}, {info['n_train_answer_tokens']:,} training answer tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
