"""The target's answers to the head's training prompts: batched, resumable, kept in parts.

Chapter 10's head learns from text the target wrote itself. Writing that text is the
slowest stage of the recipe (a million tokens take hours on two cores), so it is a job that
accumulates across runs:

* :func:`generate_answers` -- answers to a list of prompts, ``batch_size`` at a time
  (left-padded, greedy or sampled), written into our preallocated cache.
* :func:`measure_batch_sizes` -- tokens per second against the batch size, measured on the
  machine that runs the job (the answers it makes while measuring are kept).
* :func:`answer_in_parts` -- the job: the prompts not answered yet, in a fixed shuffled
  order, answered at the chosen batch size and written one part file at a time
  (``data/train/answers/part-NNNN.jsonl.gz``), so that a run stopped at any moment loses at
  most the batch in progress, and the next run carries on where it stopped.
* :func:`save_answers` / :func:`load_answers` -- one part, or every part of a folder.
* ``python -m specdec.headanswers`` -- the job's command line (``make answers``).
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import PreallocatedCache
from .headdata import Sample
from .prompts import encode_prompt

__all__ = ["answers_dir", "generate_answers", "measure_batch_sizes", "answer_in_parts", "save_answers",
           "answer_parts", "load_answers", "answered_ids", "main"]

PART_GLOB = "part-*.jsonl.gz"


def answers_dir() -> Path:
    """Where the target's answers to the training prompts are kept: ``data/train/answers/``."""
    from .provenance import repo_root

    return repo_root() / "data" / "train" / "answers"


@torch.inference_mode()
def generate_answers(target, tokenizer, prompts: list[dict], max_new_tokens: int = 256, batch_size: int = 16,
                     temperature: float = 0.0, seed: int = 0, stop_ids=(), progress: bool = True,
                     preallocated: bool = True, max_seconds: float | None = None, order: str = "shuffled",
                     on_batch=None) -> list[Sample]:
    """The target's answers to ``prompts`` (dicts with ``prompt``, ``domain``, ``id``),
    generated ``batch_size`` at a time (left-padded), greedy or at ``temperature``; each
    answer is cut after its first stop token. ``preallocated``: ``generate()`` writes into
    our preallocated cache (:class:`specdec.cache.PreallocatedCache`) instead of growing a
    ``DynamicCache`` by concatenation at every step.

    ``order="shuffled"`` takes the prompts in a shuffled order (``seed``), sorted by length only
    within windows of eight batches (so that padding stays small): with ``max_seconds`` no new
    batch starts after that time, and the answers made so far are a sample of every domain.
    ``order="given"`` keeps the list's order (still sorted by length within windows).
    ``on_batch(samples, seconds)`` is called after each batch. Returns the answered prompts'
    samples, in the order of ``prompts``.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    if order not in ("shuffled", "given"):
        raise ValueError(f"order must be 'shuffled' or 'given', got {order!r}")
    stops = sorted(int(s) for s in stop_ids)
    pad = stops[0] if stops else 0
    device = next(target.parameters()).device
    encoded = [encode_prompt(tokenizer, p["prompt"]).tolist() for p in prompts]
    if order == "shuffled":
        taken = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        taken = list(range(len(prompts)))
    window = 8 * batch_size
    ordered = [i for w in range(0, len(taken), window)
               for i in sorted(taken[w: w + window], key=lambda i: len(encoded[i]))]  # similar lengths pad less
    out: dict[int, Sample] = {}
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    bar = tqdm(total=len(prompts), desc="answers", disable=not progress)
    for b in range(0, len(ordered), batch_size):
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
        idx = ordered[b: b + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, eos_token_id=stops or None,
                      pad_token_id=pad)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        if preallocated:
            kwargs["past_key_values"] = PreallocatedCache(width + max_new_tokens + 1)
        tb = time.perf_counter()
        gen = target.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)[:, width:].tolist()
        made = []
        for row, i in enumerate(idx):
            answer = gen[row]
            cut = next((j + 1 for j, t in enumerate(answer) if t in stops), len(answer))
            out[i] = Sample(encoded[i], answer[:cut], prompts[i].get("domain", ""), prompts[i].get("id", str(i)))
            made.append(out[i])
        if on_batch is not None:
            on_batch(made, time.perf_counter() - tb)
        bar.update(len(idx))
    bar.close()
    return [out[i] for i in range(len(prompts)) if i in out]


# -- parts on disk ---------------------------------------------------------------------------


def save_answers(samples: list[Sample], path, meta: dict | None = None) -> Path:
    """Write the samples' token ids as gzipped JSON lines (a first line holds ``meta``); the
    file appears whole or not at all (written beside it, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta or {}}) + "\n")
        for s in samples:
            f.write(json.dumps(dict(id=s.id, domain=s.domain, prompt=s.prompt, answer=s.answer)) + "\n")
    tmp.replace(path)
    return path


def _load_file(path) -> tuple[list[Sample], dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        meta = json.loads(f.readline())["meta"]
        samples = [Sample(**json.loads(line)) for line in f if line.strip()]
    return samples, meta


def answer_parts(folder=None, max_parts: int | None = None) -> list[tuple[str, list[Sample], dict]]:
    """The parts of ``folder`` (default: :func:`answers_dir`) in order: ``(name, samples, meta)``."""
    folder = answers_dir() if folder is None else Path(folder)
    parts = sorted(folder.glob(PART_GLOB))[:max_parts]
    if not parts:
        raise FileNotFoundError(f"no answers in {folder}: make them with `make answers` "
                                "(python -m specdec.headanswers)")
    return [(p.name.split(".")[0], *_load_file(p)) for p in parts]


def load_answers(path=None, max_parts: int | None = None) -> tuple[list[Sample], dict]:
    """The samples and settings of one answers file, or of every part in a folder (default:
    :func:`answers_dir`), in part order. For a folder ``meta`` holds the settings every part
    shares (``max_new_tokens``, ``temperature``), the number of parts and the seconds they
    took; ``max_parts`` reads only the first ones."""
    path = answers_dir() if path is None else Path(path)
    if path.is_file():
        return _load_file(path)
    parts = answer_parts(path, max_parts)
    samples = [s for _, part, _ in parts for s in part]
    metas = [m for _, _, m in parts]
    shared = {k: metas[0].get(k) for k in ("max_new_tokens", "temperature")}
    for (name, _, m) in parts:
        if any(m.get(k) != v for k, v in shared.items()):
            raise ValueError(f"{name} was made with other settings ({m}) than {parts[0][0]} ({metas[0]})")
    return samples, dict(shared, n_parts=len(parts), seconds=sum(m.get("seconds") or 0.0 for m in metas),
                         paths=sorted({m.get("path") for m in metas if m.get("path")}))


def answered_ids(folder) -> set[str]:
    """The ids of the prompts already answered in ``folder``'s parts."""
    folder = Path(folder)
    if not any(folder.glob(PART_GLOB)):
        return set()
    return {s.id for s in load_answers(folder)[0]}


def _next_part(folder: Path) -> int:
    numbers = [int(p.name.split("-")[1].split(".")[0]) for p in folder.glob(PART_GLOB)]
    return max(numbers, default=-1) + 1


# -- the job ---------------------------------------------------------------------------------


def measure_batch_sizes(target, tokenizer, prompts: list[dict], sizes=(8, 16, 32), prompts_per_size: int = 64,
                        rounds: int = 2, max_new_tokens: int = 256, stop_ids=(), progress: bool = True):
    """Answer tokens per second at each batch size in ``sizes``: ``rounds`` rounds, each
    answering the next ``prompts_per_size / rounds`` prompts (at least one full batch) at every
    size in turn (so a slow moment of the machine falls on every size alike). Returns
    ``(table, samples)``: per size the tokens, seconds and tokens/s of each round and their
    median, and every answer made."""
    import statistics

    table = {int(b): dict(rounds=[]) for b in sizes}
    samples, at = [], 0
    for r in range(rounds):
        for b in sizes:
            per_round = max(int(b), prompts_per_size // rounds)
            chunk = prompts[at: at + per_round]
            at += per_round
            if not chunk:
                break
            t0 = time.perf_counter()
            made = generate_answers(target, tokenizer, chunk, max_new_tokens, int(b), stop_ids=stop_ids,
                                    progress=False, order="given")
            seconds = time.perf_counter() - t0
            tokens = sum(len(s.answer) for s in made)
            table[int(b)]["rounds"].append(dict(prompts=len(chunk), tokens=tokens, seconds=round(seconds, 2),
                                                tokens_per_s=round(tokens / seconds, 1)))
            samples += made
            if progress:
                print(f"batch {b:>3}, round {r + 1}: {tokens / seconds:6.1f} answer tokens/s")
    for row in table.values():
        row["median_tokens_per_s"] = statistics.median(x["tokens_per_s"] for x in row["rounds"]) if row["rounds"] else None
    return table, samples


def answer_in_parts(target, tokenizer, prompts: list[dict], out=None, batch_size: int = 16, max_new_tokens: int = 256,
                    part_batches: int = 8, target_tokens: int | None = None, max_seconds: float | None = None,
                    seed: int = 0, stop_ids=(), path_label: str = "", progress: bool = True,
                    first_samples: list[Sample] | None = None, first_seconds: float = 0.0) -> dict:
    """Answer the prompts of ``prompts`` that ``out`` has no answer for yet, in one fixed
    shuffled order (``seed``), ``batch_size`` at a time, writing a part file after every
    ``part_batches`` batches. Stops when the parts hold ``target_tokens`` answer tokens, when
    no prompt is left, or when ``max_seconds`` have passed (no batch starts after that); on
    Ctrl-C or SIGTERM the answers of the part in progress are written before it stops.
    ``first_samples`` (answers already made, e.g. while measuring batch sizes, in
    ``first_seconds``) are written first, as a part of their own. Returns a summary: parts written, prompts and tokens added, seconds, totals."""
    import signal

    out = answers_dir() if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    existing, meta = load_answers(out) if any(out.glob(PART_GLOB)) else ([], {})
    done = {s.id for s in existing}
    total_tokens = sum(len(s.answer) for s in existing)
    settings = dict(max_new_tokens=max_new_tokens, temperature=0.0)
    if existing:
        if any(meta.get(k) != v for k, v in settings.items()):
            raise ValueError(f"{out} holds answers made with {meta}; these would be made with {settings}: "
                             "use another folder")
    summary = dict(parts=[], prompts=0, tokens=0, seconds=0.0, batch_size=batch_size)
    pending: list[Sample] = []
    pending_seconds = [0.0]

    def flush(**extra):
        if pending:
            path = out / f"part-{_next_part(out):04d}.jsonl.gz"
            meta = dict(settings, seconds=round(pending_seconds[0], 2), path=path_label, batch_size=batch_size,
                        n_answered=len(pending)) | extra
            save_answers(pending, path, meta=meta)
            summary["parts"].append(path.name)
            pending.clear()
            pending_seconds[0] = 0.0

    for s in first_samples or []:
        if s.id not in done:
            pending.append(s)
            done.add(s.id)
            total_tokens += len(s.answer)
            summary["prompts"] += 1
            summary["tokens"] += len(s.answer)
    pending_seconds[0] = first_seconds
    flush(batch_size=None, made_while="measuring batch sizes (runs.jsonl)")
    todo = [p for p in prompts if p["id"] not in done]
    perm = torch.randperm(len(todo), generator=torch.Generator().manual_seed(seed)).tolist()
    todo = [todo[i] for i in perm]
    chunk = batch_size * part_batches
    t0 = time.perf_counter()

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
    bar = tqdm(total=target_tokens, initial=total_tokens, desc="answer tokens", unit="tok", disable=not progress)
    try:
        for c in range(0, len(todo), chunk):
            if target_tokens is not None and total_tokens >= target_tokens:
                break
            left = None if max_seconds is None else max_seconds - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                break

            def keep(made, seconds):
                nonlocal total_tokens
                pending.extend(made)
                pending_seconds[0] += seconds
                n = sum(len(s.answer) for s in made)
                total_tokens += n
                summary["prompts"] += len(made)
                summary["tokens"] += n
                bar.update(n)

            generate_answers(target, tokenizer, todo[c: c + chunk], max_new_tokens, batch_size, stop_ids=stop_ids,
                             progress=False, order="given", max_seconds=left, on_batch=keep)
            flush()
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        flush()
        bar.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    answered = answered_ids(out)
    summary.update(seconds=round(time.perf_counter() - t0, 1), total_tokens=total_tokens, total_prompts=len(answered),
                   prompts_left=sum(p["id"] not in answered for p in prompts))
    return summary


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv=None) -> int:
    """``python -m specdec.headanswers``: the target answers the training prompts, in parts."""
    import shlex
    import sys

    from . import cli
    from .fastpath import choose_path, prepare
    from .headdata import load_train_prompts
    from .loaders import load_smollm2
    from .prompts import stop_token_ids
    from .provenance import load_average, provenance, repo_relative

    ap = cli.ArgumentParser(prog="python -m specdec.headanswers", description=main.__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(answers_dir()), help="folder of the part files (read and added to)")
    ap.add_argument("--target-tokens", type=cli.positive_int, default=1_000_000,
                    help="stop when the parts hold this many answer tokens")
    ap.add_argument("--max-minutes", type=cli.float_range(0.0, 10_000.0, min_open=True),
                    help="start no batch after this many minutes")
    ap.add_argument("--batch-size", type=cli.int_range(1, 256),
                    help="prompts answered at once (default: the fastest of --measure, measured now)")
    ap.add_argument("--measure", default="8,16,32",
                    help="batch sizes to measure first, comma-separated (their answers are kept)")
    ap.add_argument("--part-batches", type=cli.int_range(1, 1000), default=8, help="batches per part file")
    ap.add_argument("--max-new-tokens", type=cli.int_range(8, 2048), default=256)
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in args.measure.split(",") if x.strip()})
        if any(b < 1 for b in sizes):
            raise ValueError
    except ValueError:
        ap.error(f"--measure must be positive integers separated by commas, got {args.measure!r}")
    if args.batch_size is None and not sizes:
        ap.error("give --batch-size or batch sizes to --measure")
    out = Path(args.out)
    command = shlex.join(["python", "-m", "specdec.headanswers", *(argv if argv is not None else sys.argv[1:])])
    record = provenance(command=command)
    record["load_average_start"] = load_average()
    prompts = load_train_prompts()
    target, tokenizer = load_smollm2()
    path, _ = choose_path(target)
    engine = prepare(target, path)
    stops = stop_token_ids(tokenizer, target)
    existing = load_answers(out)[0] if any(out.glob(PART_GLOB)) else []
    done = {s.id for s in existing}
    if args.target_tokens and sum(len(s.answer) for s in existing) >= args.target_tokens:
        print(f"{out} already holds {args.target_tokens:,} answer tokens or more")
        return 0
    first, table, batch = [], None, args.batch_size
    if batch is None:
        todo = [p for p in prompts if p["id"] not in done]
        perm = torch.randperm(len(todo), generator=torch.Generator().manual_seed(1)).tolist()
        need = sum(max(b, 32) * 2 for b in sizes)
        table, first = measure_batch_sizes(engine, tokenizer, [todo[i] for i in perm[:need]], sizes,
                                           max_new_tokens=args.max_new_tokens, stop_ids=stops)
        batch = max(table, key=lambda b: table[b]["median_tokens_per_s"] or 0.0)
        print(f"batch size {batch}: the fastest here ({table[batch]['median_tokens_per_s']:.0f} answer tokens/s)")
    summary = answer_in_parts(engine, tokenizer, prompts, out, batch, args.max_new_tokens, args.part_batches,
                              args.target_tokens,
                              None if args.max_minutes is None else 60 * args.max_minutes, stop_ids=stops,
                              path_label=path.label, first_samples=first,
                              first_seconds=sum(r["seconds"] for row in (table or {}).values() for r in row["rounds"]))
    record.update(out=repo_relative(out), path=path.label, batch_sizes_measured=table, summary=summary,
                  load_average_end=load_average())
    with open(out / "runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=float) + "\n")
    print(f"{summary['prompts']} answers ({summary['tokens']:,} tokens) in {summary['seconds'] / 60:.1f} min, "
          f"{len(summary['parts'])} part(s); {out} holds {summary['total_tokens']:,} answer tokens, "
          f"{summary['prompts_left']} prompts left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
