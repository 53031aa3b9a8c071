"""Training chapter 10's draft head on the target's own text (self-distillation).

The data come from :mod:`specdec.headdata` (the target's answers to training prompts and its
features on them). Here:

* :func:`head_loss` -- cross-entropy of the head's distribution against the target's on the
  draft vocabulary, unrolled ``steps`` draft steps on the head's own outputs (EAGLE-3's
  training-time test, :meth:`specdec.eagle.EagleHead.unrolled`), later steps weighted less;
  it counts the positions that predict answer tokens, where drafting happens.
* :func:`train_head` -- AdamW with warm-up and a cosine schedule, a progress bar, and a
  history of held-out figures.
* :func:`evaluate_head` -- held-out loss, the greedy agreement at each draft position, the
  expected acceptance at temperature 1 (``sum min(p, q)``), and the tokens per target pass a
  greedy chain of K drafts would give (``tau``).
* :func:`build_head` and ``python -m specdec.headtrain`` -- the whole recipe for SmolLM2, from
  prompts to a saved head with its provenance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .headdata import FeatureSet

__all__ = ["head_loss", "TrainConfig", "train_head", "evaluate_head", "build_head", "main"]


# -- batches and the loss --------------------------------------------------------------------


def _batch(fs: FeatureSet, indices, steps: int, device):
    """Padded tensors for texts ``indices``: rows ``s = 0 .. T-2`` (the pairs), ``steps`` extra
    positions of padding for the unrolled steps, and for step ``j`` a mask of the rows whose
    prediction (position ``s + j``) exists and lies in the answer."""
    n = max(len(fs.tokens[i]) for i in indices) - 1
    B = len(indices)
    H = fs.finals[indices[0]].shape[-1]
    feats = torch.zeros(B, n, fs.features[indices[0]].shape[-1])
    tokens = torch.zeros(B, n + steps, dtype=torch.long)
    finals = torch.zeros(B, n + steps + 1, H)
    lse = torch.zeros(B, n + steps + 1)
    argmax = torch.full((B, n + steps + 1), -1, dtype=torch.long)
    length = torch.zeros(B, dtype=torch.long)
    start = torch.zeros(B, dtype=torch.long)
    for row, i in enumerate(indices):
        T = len(fs.tokens[i])
        feats[row, : T - 1] = fs.features[i][: T - 1].float()
        tokens[row, : T - 1] = fs.tokens[i][1:]
        finals[row, :T] = fs.finals[i].float()
        lse[row, :T] = fs.lse[i]
        argmax[row, :T] = fs.argmax[i]
        length[row], start[row] = T, fs.starts[i]
    rows = torch.arange(n)
    masks = []
    for j in range(1, steps + 1):
        pos = rows[None, :] + j  # the position whose prediction row s's step j makes
        masks.append((pos <= length[:, None] - 1) & (pos + 1 >= start[:, None]))
    to = dict(device=device)
    return (feats.to(**to), tokens.to(**to), finals.to(**to), lse.to(**to), argmax.to(**to),
            [m.to(**to) for m in masks])


def head_loss(head, batch, steps: int, decay: float = 0.8):
    """The weighted cross-entropy of the unrolled steps, and per step the greedy agreement
    with the target's argmax, the expected acceptance ``sum min(p, q)`` at temperature 1 and
    the number of rows, on the rows of ``batch`` (:func:`_batch`)."""
    feats, tokens, finals, lse, argmax, masks = batch
    n = feats.shape[1]
    outs = head.unrolled(head.fuse(feats), tokens, steps)
    total, weight, stats = 0.0, 0.0, []
    for j, (h, mask) in enumerate(zip(outs, masks), start=1):
        logq = F.log_softmax(head.logits(h).float(), -1)
        # the target's probabilities on the draft vocabulary (they sum to at most 1)
        fin = finals[:, j: j + n]
        logp = fin @ head.target_rows.T - lse[:, j: j + n, None]
        p = logp.exp()
        ce = -(p * logq).sum(-1)
        m = mask.float()
        rows = m.sum().clamp(min=1)
        total = total + decay ** (j - 1) * (ce * m).sum() / rows
        weight += decay ** (j - 1)
        with torch.no_grad():
            best = argmax[:, j: j + n]
            agree = (head.d2t[logq.argmax(-1)] == best).float()
            accept = torch.minimum(p, logq.exp()).sum(-1)
            # where the target's argmax ranks among the head's guesses (len(d2t): not among them)
            idx = _target_to_draft(head)[best.clamp(min=0)]
            mine = logq.gather(-1, idx.clamp(min=0).unsqueeze(-1))
            rank = torch.where(idx >= 0, (logq > mine).sum(-1), torch.full_like(idx, len(head.d2t)))
            stats.append(dict(agree=agree, accept=accept, mask=mask, ce=ce.detach(), rank=rank))
    return total / weight, stats


def _target_to_draft(head) -> torch.Tensor:
    """``t2d[token id]``: the token's index in the draft vocabulary, -1 where it has none."""
    t2d = torch.full((head.vocab_size,), -1, dtype=torch.long, device=head.d2t.device)
    t2d[head.d2t] = torch.arange(len(head.d2t), device=head.d2t.device)
    return t2d


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train: token budget per batch, passes, optimiser, unrolled steps."""

    epochs: float = 1.0
    batch_tokens: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 20
    steps: int = 3  # draft steps unrolled (training-time test)
    decay: float = 0.8  # weight of each later step
    eval_every: int = 50
    eval_k: int = 4  # draft length of the held-out tau
    seed: int = 0
    max_seconds: float | None = None  # stop early when the wall clock passes this

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_tokens < 1 or self.lr <= 0 or self.steps < 1 or self.eval_k < 1:
            raise ValueError("epochs, batch_tokens, lr, steps and eval_k must be positive")


def _batches(fs: FeatureSet, batch_tokens: int, generator) -> list[list[int]]:
    """Texts grouped by length into batches of about ``batch_tokens`` padded tokens, shuffled."""
    order = sorted(range(len(fs)), key=lambda i: len(fs.tokens[i]))
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(fs.tokens[i]) > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    perm = torch.randperm(len(out), generator=generator).tolist()
    return [out[i] for i in perm]


def train_head(head, train: FeatureSet, held_out: FeatureSet | None = None, config: TrainConfig = TrainConfig(),
               progress: bool = True) -> "pd.DataFrame":
    """Train ``head`` in place; returns the history (one row per evaluation: optimiser step,
    training tokens seen, seconds, training loss, held-out loss and acceptance)."""
    import pandas as pd

    if not len(train):
        raise ValueError("no training texts")
    g = torch.Generator().manual_seed(config.seed)
    device = head.d2t.device
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = _batches(train, config.batch_tokens, g)
    total = max(1, math.ceil(config.epochs * len(per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    rows, seen, t0, recent = [], 0, time.perf_counter(), []

    def record(step):
        row = dict(step=step, tokens=seen, seconds=time.perf_counter() - t0,
                   train_loss=float(sum(recent) / len(recent)) if recent else math.nan)
        if held_out is not None and len(held_out):
            ev = evaluate_head(head, held_out, steps=config.eval_k, batch_tokens=config.batch_tokens)
            row.update(held_out_loss=ev["loss"], tau=ev["tau"], accept_1=ev["agree"][0],
                       expected_accept_1=ev["accept"][0])
        rows.append(row)
        recent.clear()
        return row

    head.train()
    record(0)
    bar = tqdm(total=total, desc="training", disable=not progress)
    step = 0
    batches = iter(per_epoch)
    while step < total:
        try:
            idx = next(batches)
        except StopIteration:
            batches = iter(_batches(train, config.batch_tokens, g))
            idx = next(batches)
        loss, stats = head_loss(head, _batch(train, idx, config.steps, device), config.steps, config.decay)
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
        out_of_time = config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds
        if step % config.eval_every == 0 or step == total or out_of_time:
            head.eval()
            record(step)
            head.train()
        if out_of_time:
            break
    bar.close()
    head.eval()
    return pd.DataFrame(rows)


@torch.no_grad()
def evaluate_head(head, fs: FeatureSet, steps: int = 4, batch_tokens: int = 4096, by_domain: bool = False,
                  ranks: int = 4) -> dict:
    """Held-out figures of ``head`` on ``fs``: loss (the unweighted mean over steps), per draft
    position the greedy agreement with the target given the earlier ones agreed
    (``agree[j]``: the fraction of chains still alive at step ``j+1`` that step ``j+1``
    extends) and the expected acceptance at temperature 1 of the first steps (``accept``),
    and ``tau``, the mean tokens per target pass of a greedy chain of ``steps`` drafts
    (accepted drafts + the target's own token), from every answer position. On greedy text
    these are what drafting gives (an accepted draft token equals the text's next token); on
    sampled text they are the agreement with the target's argmax along the text.
    ``by_domain`` adds ``tau_by_domain``. ``rank_acceptance[j][r]``: among chains alive at step
    ``j+1``, the share whose target token is the head's ``r``-th guess (``r < ranks``) -- what
    a greedy tree's ``r``-th child at that depth would catch (:func:`specdec.trees.plan_shape`)."""
    was_training = head.training
    head.eval()
    g = torch.Generator().manual_seed(0)
    alive_sum = torch.zeros(steps + 1)
    rank_sum = torch.zeros(steps, ranks)
    accept_sum, accept_rows = torch.zeros(steps), torch.zeros(steps)
    loss_sum, loss_rows = 0.0, 0.0
    accepted_total, chains = 0.0, 0.0
    domains = {}
    for idx in _batches(fs, batch_tokens, g):
        batch = _batch(fs, idx, steps, head.d2t.device)
        _, stats = head_loss(head, batch, steps)
        masks = batch[-1]
        # chains start at every row whose first prediction is in the answer and complete
        base = masks[0]
        alive = base.clone()
        length = torch.zeros_like(base, dtype=torch.float)
        alive_sum[0] += base.sum().item()
        for j, st in enumerate(stats):
            valid = st["mask"] & base
            live = alive & valid  # chains alive before this step
            for r in range(ranks):
                rank_sum[j, r] += (live & (st["rank"] == r)).sum().item()
            alive = alive & valid & (st["agree"] > 0)
            length += alive.float()
            alive_sum[j + 1] += alive.sum().item()
            accept_sum[j] += (st["accept"] * st["mask"]).sum().item()
            accept_rows[j] += st["mask"].sum().item()
        accepted_total += length[base].sum().item()
        chains += base.sum().item()
        for st in stats:
            loss_sum += (st["ce"] * st["mask"]).sum().item() / steps
            loss_rows += st["mask"].sum().item() / steps
        if by_domain:
            for row, i in enumerate(idx):
                d = domains.setdefault(fs.domains[i], [0.0, 0.0])
                d[0] += length[row][base[row]].sum().item()
                d[1] += base[row].sum().item()
    if was_training:
        head.train()
    agree = [(alive_sum[j + 1] / alive_sum[j]).item() if alive_sum[j] else math.nan for j in range(steps)]
    rank_acc = [(rank_sum[j] / alive_sum[j]).tolist() if alive_sum[j] else [math.nan] * ranks for j in range(steps)]
    out = dict(loss=loss_sum / max(loss_rows, 1), agree=agree, rank_acceptance=rank_acc,
               accept=(accept_sum / accept_rows.clamp(min=1)).tolist(),
               tau=1.0 + accepted_total / max(chains, 1), n_positions=int(chains))
    if by_domain:
        out["tau_by_domain"] = {d: 1.0 + a / max(c, 1) for d, (a, c) in domains.items()}
    return out


# -- the whole recipe ------------------------------------------------------------------------


def _repo() -> Path:
    return Path(__file__).resolve().parents[2]


def default_answers_path():
    """Where the target's answers to the training prompts are kept (:func:`specdec.headanswers.answers_dir`)."""
    from .headanswers import answers_dir

    return answers_dir()


def build_head(target, tokenizer, prompts: list[dict], answers_path=None, max_new_tokens: int = 256,
               batch_size: int = 16, draft_vocab: int | None = None, feature_layers=None, held_out_every: int = 20,
               config: TrainConfig = TrainConfig(), reference_tokens: int = 0, answer_seconds: float | None = None,
               progress: bool = True, log=print):
    """Prompts to a trained head: the target's answers (read from ``answers_path`` where it
    holds every prompt's, else generated and written there), the draft vocabulary, the
    features, training. Every ``held_out_every``-th text is held out for the curves.
    ``answer_seconds`` caps the time spent generating answers (a sample of every domain is
    answered, :func:`specdec.headdata.generate_answers`). ``reference_tokens`` adds that much
    text the target did not write
    (:func:`specdec.headdata.reference_samples`) to the training texts only; the draft
    vocabulary and every held-out figure come from the target's answers.

    The answers and the features are computed on the target's fastest path here
    (:func:`specdec.fastpath.choose_path`), the path the loop will run it on.

    Returns ``(head, history, info)``; ``info`` holds the counts and the seconds of each stage.
    """
    from .eagle import DRAFT_VOCAB, EagleHead
    from .fastpath import choose_path, prepare
    from .headanswers import generate_answers, load_answers, save_answers
    from .headdata import draft_vocabulary, extract_features, reference_samples
    from .prompts import stop_token_ids

    if not prompts:
        raise ValueError("no training prompts")
    info, t = {}, time.perf_counter()
    stops = stop_token_ids(tokenizer, target)
    path, _ = choose_path(target)
    engine = prepare(target, path)
    info["path"] = path.label
    samples = None
    if answers_path is not None and Path(answers_path).exists() and (
            Path(answers_path).is_file() or any(Path(answers_path).glob("part-*"))):
        stored, meta = load_answers(answers_path)
        wanted = {p["id"] for p in prompts}
        if meta.get("max_new_tokens") == max_new_tokens and all(s.id in wanted for s in stored):
            samples = stored
            info["answer_seconds"] = meta.get("seconds")
            log(f"answers: {len(samples)} of {len(prompts)} prompts' read from {answers_path}")
    if samples is None:
        samples = generate_answers(engine, tokenizer, prompts, max_new_tokens, batch_size, stop_ids=stops,
                                   progress=progress, max_seconds=answer_seconds)
        info["answer_seconds"] = time.perf_counter() - t
        if answers_path is not None:
            save_answers(samples, Path(answers_path) / "part-0000.jsonl.gz" if Path(answers_path).suffix != ".gz"
                         else answers_path, meta=dict(max_new_tokens=max_new_tokens, temperature=0.0,
                                                          seconds=info["answer_seconds"], n_prompts=len(prompts),
                                                          n_answered=len(samples), path=path.label))
    held = [s for i, s in enumerate(samples) if i % held_out_every == held_out_every - 1]
    train = [s for i, s in enumerate(samples) if i % held_out_every != held_out_every - 1]
    d2t = draft_vocabulary(train, DRAFT_VOCAB if draft_vocab is None else draft_vocab, always=sorted(stops))
    head = EagleHead.for_target(target, d2t, feature_layers)
    n_answer_tokens = sum(len(s.answer) for s in train)
    if reference_tokens:
        extra = reference_samples(tokenizer, reference_tokens, progress=progress)
        info["n_reference_tokens"] = sum(len(s.answer) for s in extra)
        train = train + extra
    t = time.perf_counter()
    train_fs = extract_features(engine, train, head.cfg.feature_layers, progress=progress)
    held_fs = extract_features(engine, held, head.cfg.feature_layers, progress=progress)
    info["feature_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    history = train_head(head, train_fs, held_fs, config, progress=progress)
    info["train_seconds"] = time.perf_counter() - t
    info["held_out_eval"] = evaluate_head(head, held_fs, steps=config.eval_k, by_domain=True, ranks=8)
    info.update(n_train_texts=len(train), n_held_out_texts=len(held), n_train_answer_tokens=n_answer_tokens,
                n_train_tokens=train_fs.n_answer_tokens,
                n_held_out_answer_tokens=held_fs.n_answer_tokens, draft_vocab=len(d2t),
                feature_layers=list(head.cfg.feature_layers))
    return head, history, info


def main(argv=None) -> int:
    """``python -m specdec.headtrain``: train the book's head on SmolLM2 and save it."""
    import dataclasses
    import shlex
    import sys

    from . import cli
    from .bench import load_average, provenance
    from .eagle import DRAFT_VOCAB, book_head_dir, save_head
    from .headdata import load_train_prompts
    from .loaders import load_smollm2

    ap = cli.ArgumentParser(prog="python -m specdec.headtrain", description=main.__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(book_head_dir()), help="folder for head.safetensors, head.json, history.csv")
    ap.add_argument("--answers", default=str(default_answers_path()), help="the target's answers (read or written)")
    ap.add_argument("--n-per-domain", type=cli.positive_int, help="training prompts per domain (default: all)")
    ap.add_argument("--max-new-tokens", type=cli.int_range(8, 2048), default=256)
    ap.add_argument("--batch-size", type=cli.int_range(1, 256), default=16, help="prompts answered at once")
    ap.add_argument("--draft-vocab", type=cli.int_range(16, 49152), default=DRAFT_VOCAB)
    ap.add_argument("--epochs", type=cli.float_range(0.0, 1000.0, min_open=True), default=1.0)
    ap.add_argument("--steps", type=cli.int_range(1, 8), default=3, help="draft steps unrolled in training")
    ap.add_argument("--lr", type=cli.float_range(0.0, 1.0, min_open=True), default=1e-3)
    ap.add_argument("--max-minutes", type=cli.float_range(0.0, 10_000.0, min_open=True),
                    help="stop training after this many minutes")
    ap.add_argument("--answer-minutes", type=cli.float_range(0.0, 10_000.0, min_open=True),
                    help="stop starting new batches of answers after this many minutes")
    ap.add_argument("--reference-tokens", type=cli.nonneg_int, default=0,
                    help="tokens of standard-library source and documentation added to the training text")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "-m", "specdec.headtrain", *(argv if argv is not None else sys.argv[1:])])
    record = provenance(command=command)
    record["load_average_start"] = load_average()
    prompts = load_train_prompts(n_per_domain=args.n_per_domain)
    target, tokenizer = load_smollm2()
    config = TrainConfig(epochs=args.epochs, steps=args.steps, lr=args.lr,
                         max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    head, history, info = build_head(target, tokenizer, prompts, args.answers, args.max_new_tokens, args.batch_size,
                                     args.draft_vocab, config=config, reference_tokens=args.reference_tokens,
                                     answer_seconds=None if args.answer_minutes is None else 60 * args.answer_minutes)
    record.update(info, train_config=dataclasses.asdict(config), load_average_end=load_average(),
                  held_out=history.iloc[-1].to_dict())
    out = save_head(head, args.out, provenance=record)
    history.to_csv(out / "history.csv", index=False)
    last = history.iloc[-1]
    print(f"head saved in {out}: held-out tau {last['tau']:.2f} (K={config.eval_k}), first-draft agreement "
          f"{last['accept_1']:.2f}, {info['n_train_answer_tokens']:,} training tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
