"""The benchmark harness (chapters 6 and 7): sweep pairs x domains x K, time, store.

One benchmark *configuration* (:class:`BenchmarkConfig`) is one generation: a pair, a method,
a draft length K, one prompt, a token budget and sampling settings. A sweep
(:class:`SweepPlan`) expands into configurations and runs them, appending one JSON line per
generation (:func:`specdec.metrics.write_jsonl`) to a results file. The configurations of one
prompt form a *block* (the baselines, every method and K); :func:`run_sweep` runs each block
``n_repeats`` times, round robin, so each generation is timed a few seconds from its baseline.
Every record carries its configuration, the configuration's hash and its repeat in ``meta``, so
a sweep that stops half-way resumes where it stopped. Next to the results file a *provenance*
record (``<name>.provenance.json``) says how each run was made: command line, device, CPU,
library versions, date, profile, load averages and how busy other processes kept the machine;
recording while the machine is busy is refused unless forced (:class:`BusyMachineError`).

Methods, all timed the same way (wall clock around the whole generation, the first token
included):

* ``autoregressive`` -- :func:`specdec.decoding.autoregressive_generate`, the baseline;
* ``speculative``    -- :func:`specdec.decoding.speculative_generate` with the pair's drafter;
  both of ours run the target on the path :func:`specdec.fastpath.choose_path` picked on this
  machine (:meth:`BenchPair.use_engine_path`; the record's ``meta["path"]`` names it), so their
  speedup compares like with like;
* ``hf_autoregressive`` -- ``model.generate()`` of ``transformers``, its own baseline;
* ``hf_assisted``    -- ``model.generate(assistant_model=draft)`` with K draft tokens a round;
* ``hf_prompt_lookup`` -- ``model.generate(prompt_lookup_num_tokens=K)`` for the n-gram pair;
  the three ``hf_`` methods run the target as loaded, as a reader calling ``generate()`` would.

Pairs are the registry's (:data:`specdec.registry.PAIRS`, loaded by
:func:`specdec.loaders.load_pair`) and synthetic pairs named ``synthetic-eps<knob>``
(:func:`specdec.synthetic.synthetic_pair`, random-token prompts). A pair whose weights are
absent, or whose draft and target do not share a vocabulary, is skipped with one printed line.

The results are read by :mod:`specdec.analysis` (:func:`~specdec.analysis.load_results`,
:func:`~specdec.analysis.speedups`, :func:`~specdec.analysis.speedup_table`, ...), which also
defines what a record holds (:class:`~specdec.analysis.BenchmarkConfig`, the method names,
the phases), and drawn by :mod:`specdec.plots`; neither imports this module. Speedups are
:func:`specdec.metrics.speedup`: decode-only (after the first token) is the headline, end to
end beside it. The cost side without weights (:func:`measure_step_costs`,
:func:`layer_extrapolated_costs`) times random-weight models.

Command line: ``python -m specdec.bench run --out runs/x.jsonl`` (see ``--help``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .provenance import (BUSY_LOAD_PER_CORE, BusyMachineError, OthersCPU, is_committed_path,  # noqa: F401
                         load_average, require_quiet, wait_for_quiet, write_report)
from .provenance import provenance as _provenance
from .analysis import OUR_METHODS, SYNTHETIC_DOMAIN, BenchmarkConfig, provenance_path  # noqa: F401
from .decoding import autoregressive_generate, speculative_generate
from .drafters import NGramDrafter
from .metrics import GenerationResult, read_jsonl, write_jsonl
from .pairs import (BenchPair, _check_pair_name, _threads, load_bench_pair, parse_synthetic,  # noqa: F401
                    synthetic_pair_name)
from .stepcosts import layer_extrapolated_costs, measure_step_costs  # noqa: F401
from .sweepplan import SweepPlan, plan_for_profile  # noqa: F401

__all__ = [
    # defined in specdec.analysis (the vocabulary of a results record), used here to write one
    "BenchmarkConfig",
    "provenance_path",
    # the harness
    "SweepPlan",
    "plan_for_profile",
    "synthetic_pair_name",
    "parse_synthetic",
    "BenchPair",
    "load_bench_pair",
    "bench_prompts",
    "run_config",
    "run_sweep",
    "completed_hashes",
    "BusyMachineError",
    "BUSY_LOAD_PER_CORE",
    "load_average",
    "wait_for_quiet",
    "is_committed_path",
    "provenance",
    "measure_step_costs",
    "layer_extrapolated_costs",
    "main",
]

_SYNTHETIC_PROMPT_LEN = 16


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def bench_prompts(pair: BenchPair, domains, n: int, seed: int = 0) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """``{domain: [(prompt_id, token ids), ...]}``: the first ``n`` prompts of each domain,
    encoded with the pair's chat template; for a synthetic pair ``n`` random-token prompts."""
    from .prompts import encode_prompt, load_prompts

    if pair.synthetic:
        vocab = pair.target.config.vocab_size
        out = []
        for i in range(n):
            g = torch.Generator().manual_seed(1000 * seed + i)
            out.append((f"{SYNTHETIC_DOMAIN}/{i}", torch.randint(vocab, (_SYNTHETIC_PROMPT_LEN,), generator=g)))
        return {SYNTHETIC_DOMAIN: out}
    return {d: [(p["id"], encode_prompt(pair.tokenizer, p["prompt"])) for p in load_prompts(d, n)] for d in domains}


# --------------------------------------------------------------------------------------------
# Running one configuration
# --------------------------------------------------------------------------------------------


def _hf_generate(pair: BenchPair, cfg: BenchmarkConfig, prompt: torch.Tensor) -> GenerationResult:
    """A transformers method of ``cfg`` on the loaded pair (:func:`specdec.hfpeers.hf_generate`)."""
    from .hfpeers import hf_generate

    extra = {}
    if cfg.method == "hf_assisted":
        if pair.draft is None:
            raise ValueError(f"pair {pair.name!r} has no draft model: use hf_prompt_lookup")
        extra = dict(assistant_model=pair.draft, num_assistant_tokens=cfg.k, num_assistant_tokens_schedule="constant",
                     assistant_confidence_threshold=0.0)
        if pair.kind == "crossvocab":  # universal assisted generation: texts matched through both tokenizers
            extra.update(tokenizer=pair.tokenizer, assistant_tokenizer=pair.draft_tokenizer)
    elif cfg.method == "hf_prompt_lookup":
        extra = dict(prompt_lookup_num_tokens=cfg.k, max_matching_ngram_size=NGramDrafter().max_ngram)
    return hf_generate(pair.target, prompt, cfg.max_new_tokens, cfg.params, pair.stop_ids, cfg.method, cfg.seed,
                       **extra)


def run_config(pair: BenchPair, cfg: BenchmarkConfig, prompt: torch.Tensor) -> GenerationResult:
    """Run one configuration on a loaded pair; the result's ``meta`` holds the config and hash."""
    if cfg.pair != pair.name:
        raise ValueError(f"config is for pair {cfg.pair!r} but pair {pair.name!r} is loaded")
    with _threads(pair.one_thread):
        if cfg.method == "autoregressive":
            res = autoregressive_generate(pair.engine, prompt, cfg.max_new_tokens, cfg.params, pair.stop_ids, cfg.seed)
        elif cfg.method == "speculative":
            res = speculative_generate(pair.engine, pair.drafter(), prompt, cfg.max_new_tokens, cfg.k, cfg.params,
                                       pair.stop_ids, cfg.seed)
        else:
            if cfg.method == "hf_prompt_lookup" and pair.draft is not None:
                raise ValueError(f"hf_prompt_lookup is the peer of the n-gram pair, not of {pair.name!r}")
            res = _hf_generate(pair, cfg, prompt)
    if pair.tokenizer is not None:
        res.text = pair.tokenizer.decode(res.tokens, skip_special_tokens=True)
    res.meta.update(config=cfg.to_dict(), config_hash=cfg.config_hash,
                    path=pair.path.label if cfg.method in OUR_METHODS else "as loaded")
    return res


# --------------------------------------------------------------------------------------------
# Provenance and resuming
# --------------------------------------------------------------------------------------------


def provenance(plan: SweepPlan | None = None, command: str | None = None, device: str = "cpu") -> dict:
    """:func:`specdec.provenance.provenance` with the sweep's profile and plan."""
    record = _provenance(command=command, device=device)
    record.update(profile=plan.profile if plan is not None else record["profile"],
                  plan=asdict(plan) if plan is not None else None)
    return record


def _write_provenance(results_path: Path, record: dict) -> Path:
    """Add ``record`` to the provenance file of ``results_path``, or replace the record with the
    same ``run_id`` (a run writes its record when it starts and again when it ends)."""
    path = provenance_path(results_path)
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = [r for r in runs if r.get("run_id") != record["run_id"]] + [record]
    path.write_text(json.dumps({"results": results_path.name, "runs": runs}, indent=2) + "\n")
    return path


def completed_hashes(path: str | Path) -> set[tuple[str, int]]:
    """``(config hash, repeat)`` pairs already in a results file (empty if there is no file)."""
    path = Path(path)
    if not path.is_file():
        return set()
    return {(r.meta["config_hash"], int(r.meta.get("repeat", 0))) for r in read_jsonl(path) if "config_hash" in r.meta}


def run_sweep(plan: SweepPlan, out: str | Path, progress: bool = True, command: str | None = None,
              log=print, max_load: float | None = None, force: bool = False) -> Path:
    """Run every configuration of ``plan`` not yet in ``out``, ``plan.n_repeats`` times each,
    appending one JSON line per generation.

    The unit of work is one repeat of one *block* (:meth:`SweepPlan.blocks`: the baseline and
    every method and K on one prompt; :meth:`SweepPlan.pending` leaves out what is done, but
    never a needed baseline): its configurations run one after another, in the
    block's order on even repeats and reversed on odd ones (A B C, C B A, A B C, ...), so each
    speedup divides two timings made a few seconds apart and a slow drift of the machine
    cancels rather than favours whoever runs first. A unit's records are written together when
    it ends, with their ``repeat`` index and the cores other processes kept busy meanwhile
    (``others_cpu``); a sweep that stops half-way resumes at the first unfinished unit.

    Our methods run each pair's target on the path measured fastest here
    (:meth:`BenchPair.use_engine_path`); the provenance record keeps each pair's path table.

    ``max_load``: refuse to start (:class:`BusyMachineError`) while the 1-minute load average
    is above it, unless ``force``; the provenance record then says the run was forced. Use it
    for files others will read as measurements (the command line does so under data/results).

    Pairs that cannot load here are skipped with one line through ``log``. Each invocation
    adds a provenance record to ``<out>.provenance.json`` when it starts (also when nothing is
    left to run) and completes it when it ends (``n_new_records``, ``finished``, load averages).
    Returns the results path.
    """
    from .registry import ModelUnavailableError, VocabularyMismatchError

    out = Path(out)
    load = load_average()
    busy = max_load is not None and load is not None and load[0] > max_load
    if busy and not force:
        raise BusyMachineError(
            f"the load average is {load[0]:.2f} (above {max_load:.2f}): something else is running, and "
            f"timings made now would not be measurements of this code; wait for a quiet machine or force it")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = completed_hashes(out)
    _close_interrupted_runs(out)
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S-") + os.urandom(3).hex()
    record = provenance(plan, command, plan.device)
    record.update(run_id=run_id, skipped_pairs={}, paths={}, n_new_records=0, finished=None, load_average_start=load,
                  max_load=max_load, forced_while_busy=bool(busy))
    _write_provenance(out, record)  # a run in progress is already described
    n_new, others = 0, []
    try:
        for name in plan.pairs:
            try:
                pair = load_bench_pair(name, plan.device)
            except (ModelUnavailableError, VocabularyMismatchError) as err:
                why = "different vocabularies" if isinstance(err, VocabularyMismatchError) else "weights not available here"
                log(f"skipping pair {name}: {why} ({type(err).__name__}: {str(err).split('. ')[0]}.)")
                record["skipped_pairs"][name] = f"{type(err).__name__}: {err}"
                continue
            prompts = bench_prompts(pair, plan.domains, plan.n_prompts, plan.seed)
            by_id = {pid: ids for items in prompts.values() for pid, ids in items}
            units = plan.pending(name, {d: [pid for pid, _ in v] for d, v in prompts.items()}, done, pair.dtype)
            if not units:
                continue
            path = pair.use_engine_path()
            record["paths"][name] = dict(chosen=path.label, table=None if pair.path_table is None else
                                         pair.path_table.round(3).to_dict(orient="records"),
                                         draft=None if pair.draft_path is None else pair.draft_path.label)
            _write_provenance(out, record)
            _warm_up(pair, [c for _, block in units for c in block], by_id)
            bar = tqdm(total=sum(len(b) for _, b in units), desc=name, disable=not progress)
            for r, block in units:
                meter, results = OthersCPU(), []
                for cfg in (block if r % 2 == 0 else block[::-1]):
                    res = run_config(pair, cfg, by_id[cfg.prompt_id])
                    res.meta.update(run_id=run_id, repeat=r)
                    results.append(res)
                    bar.update(1)
                busy_cores = meter.cores()
                for res in results:
                    res.meta["others_cpu"] = busy_cores
                write_jsonl(out, results)
                done.update((res.meta["config_hash"], r) for res in results)
                n_new += len(results)
                if busy_cores is not None:
                    others.append(busy_cores)
            bar.close()
            del pair
    finally:
        record.update(n_new_records=n_new, load_average_end=load_average(),
                      others_cpu_median=float(np.median(others)) if others else None,
                      others_cpu_max=max(others) if others else None,
                      finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        _write_provenance(out, record)
    return out


def _close_interrupted_runs(out: Path) -> None:
    """Complete the provenance records of earlier runs on ``out`` that never finished (the
    process was killed before its ``finally``): their ``n_new_records`` is counted from the
    results file, and ``finished`` says they were interrupted."""
    path = provenance_path(out)
    if not path.is_file():
        return
    runs = json.loads(path.read_text())["runs"]
    open_runs = [r for r in runs if r.get("finished") is None and r.get("run_id")]
    if not open_runs:
        return
    counts: dict[str, int] = {}
    for res in (read_jsonl(out) if out.is_file() else []):
        rid = res.meta.get("run_id")
        counts[rid] = counts.get(rid, 0) + 1
    for r in open_runs:
        r.update(n_new_records=counts.get(r["run_id"], 0), finished="interrupted",
                 interrupted_note="stopped before it could complete this record; n_new_records counted "
                                  "from the results file when the next run started")
        _write_provenance(out, r)


def _warm_up(pair: BenchPair, todo: list[BenchmarkConfig], by_id: dict) -> None:
    """One short untimed generation per method, so that one-off costs (lazy initialisation,
    memory allocation, kernel selection) do not land in the first timed configuration."""
    seen = set()
    for cfg in todo:
        if cfg.method in seen:
            continue
        seen.add(cfg.method)
        short = BenchmarkConfig.from_dict({**cfg.to_dict(), "max_new_tokens": min(4, cfg.max_new_tokens)})
        run_config(pair, short, by_id[cfg.prompt_id])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from . import cli
    from .analysis import acceptance_by_domain, load_results, speedup_table
    from .profiles import PROFILES
    from .prompts import DOMAINS

    ap = cli.ArgumentParser(prog="python -m specdec.bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a sweep (resumes an existing results file)")
    run.add_argument("--out", required=True, help="results file (JSON lines), e.g. runs/cpu.jsonl, or a folder "
                     "ending in / for one file per pair, e.g. data/results/cpu/")
    run.add_argument("--profile", choices=tuple(PROFILES), default=None,
                     help="whose sweep to run (default: $SPECDEC_PROFILE, else cpu)")
    run.add_argument("--live", action="store_true", help="the profile's bounded live sweep instead of its whole one")
    run.add_argument("--pairs", type=cli.name_list(validate=_check_pair_name, what="pair"),
                     help="comma-separated pair names (registry or synthetic-eps<x>)")
    run.add_argument("--domains", type=cli.name_list(DOMAINS, what="domain"), help="comma-separated prompt domains")
    run.add_argument("--ks", type=cli.int_list(minimum=1), help="comma-separated draft lengths, e.g. 1,2,4,8")
    run.add_argument("--n-prompts", type=cli.positive_int, help="prompts per domain")
    run.add_argument("--max-new-tokens", type=cli.int_list(minimum=1), help="comma-separated token budgets")
    run.add_argument("--temperatures", type=cli.float_list(minimum=0.0), help="comma-separated temperatures (0 = greedy)")
    run.add_argument("--repeats", type=cli.positive_int, help="times each configuration runs (default: the profile's)")
    run.add_argument("--top-k", type=cli.nonneg_int)
    run.add_argument("--top-p", type=cli.float_range(0.0, 1.0, min_open=True))
    run.add_argument("--seed", type=cli.nonneg_int)
    run.add_argument("--device", choices=("cpu", "cuda"))
    run.add_argument("--no-hf-peers", action="store_true", help="skip the transformers generate() methods")
    run.add_argument("--force", action="store_true",
                     help="record a file under data/results although the machine is busy (the provenance says so)")
    summ = sub.add_parser("summary", help="print speedup and acceptance tables of a results file")
    summ.add_argument("results")
    eng = sub.add_parser("engine", help="our loops against transformers generate() on the offline target, "
                                        "with the fraction of the bandwidth bound and the int4/int8 draft")
    eng.add_argument("--out", help="write the figures as JSON, e.g. data/results/engine_cpu.json")
    eng.add_argument("--n-prompts", type=cli.positive_int, default=12, help="code prompts (the last ones)")
    eng.add_argument("--max-new-tokens", type=cli.int_range(2, 1024), default=64)
    eng.add_argument("--k", type=cli.int_range(1, 16), default=4, help="tokens drafted per round")
    eng.add_argument("--repeats", type=cli.positive_int, default=3)
    eng.add_argument("--bits", type=int, choices=(8, 4), default=4, help="the draft's weight bits")
    eng.add_argument("--force", action="store_true", help="record under data/results although the machine is busy")
    hd = sub.add_parser("head", help="chapter 10's trained head against every other drafter, interleaved")
    hd.add_argument("--out", help="write the figures as JSON, e.g. data/results/head_cpu.json")
    hd.add_argument("--n-per-domain", type=cli.int_range(1, 40), default=4, help="prompts per domain")
    hd.add_argument("--max-new-tokens", type=cli.int_range(2, 1024), default=64)
    hd.add_argument("--k", type=cli.int_range(1, 16),
                    help="tokens drafted per round (default: the K the law picks from the head's held-out acceptance, "
                         "its cost and this machine's v(n))")
    hd.add_argument("--repeats", type=cli.positive_int, default=3)
    hd.add_argument("--force", action="store_true", help="record under data/results although the machine is busy")
    args = ap.parse_args(argv)

    if args.command in ("head", "engine"):
        from .enginebench import engine_report, format_report
        from .headbench import format_head_report, head_report
        from .registry import ModelUnavailableError

        command = shlex.join(["python", "-m", "specdec.bench", *(argv or sys.argv[1:])])
        try:
            if args.command == "head":
                text = format_head_report(head_report(args.n_per_domain, args.max_new_tokens, args.k, args.repeats,
                                                      args.out, args.force, command=command))
            else:
                text = format_report(engine_report(args.n_prompts, args.max_new_tokens, args.k, args.repeats,
                                                   args.bits, args.out, args.force, command=command))
        except BusyMachineError as err:
            print(f"error: {err}", file=sys.stderr)
            return 3
        except ModelUnavailableError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except ValueError as err:
            (hd if args.command == "head" else eng).error(str(err))
        print(text)
        return 0

    if args.command == "summary":
        if not Path(args.results).is_file():
            summ.argument_error("results", f"no file {args.results!r}", "a results file written by 'run'")
        import pandas as pd

        df = load_results(args.results)
        with pd.option_context("display.width", 160, "display.max_rows", 200):
            print("decode speedup (after the first token; median over repeats, geometric mean over prompts; "
                  "lo..hi over repeats) and end to end:")
            table = speedup_table(df)
            table["speedup_e2e"] = speedup_table(df, value="speedup_e2e")["speedup_e2e"]
            print(table.to_string(index=False, float_format="%.3f"))
            print()
            print(acceptance_by_domain(df).to_string(index=False, float_format="%.3f"))
        return 0

    overrides = {name: getattr(args, attr) for name, attr in
                 [("pairs", "pairs"), ("domains", "domains"), ("ks", "ks"), ("n_prompts", "n_prompts"),
                  ("max_new_tokens", "max_new_tokens"), ("temperatures", "temperatures"), ("top_k", "top_k"),
                  ("top_p", "top_p"), ("seed", "seed"), ("device", "device"), ("n_repeats", "repeats")]
                 if getattr(args, attr) is not None}
    if args.no_hf_peers:
        overrides["hf_peers"] = False
    try:
        plan = plan_for_profile(args.profile, which="live" if args.live else "sweep", **overrides)
    except ValueError as err:
        ap.error(str(err))
    out = Path(args.out)
    # A folder (an existing one, or a path ending in "/") gets one file per pair, <pair>.jsonl:
    # each pair's file is complete on its own, so a long recording can be kept pair by pair.
    per_pair = out.is_dir() or args.out.endswith(("/", os.sep))
    jobs = ([(replace(plan, pairs=(name,)), out / f"{name}.jsonl") for name in plan.pairs]
            if per_pair else [(plan, out)])
    max_load = BUSY_LOAD_PER_CORE * (os.cpu_count() or 1) if is_committed_path(out) else None
    command = "python -m specdec.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    import signal

    def _terminate(signum, frame):  # a SIGTERM stops the sweep as Ctrl-C does: records kept, provenance closed
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for i, (job, path) in enumerate(jobs):
            if i and max_load is not None:
                wait_for_quiet(max_load)  # the previous pair's own load decays before the next starts
            run_sweep(job, path, command=command, max_load=max_load, force=args.force)
            print(f"results: {path}  provenance: {provenance_path(path)}")
    except KeyboardInterrupt as err:
        print(f"{ap.prog}: stopped ({err or 'interrupted'}); run the same command again to resume", file=sys.stderr)
        return 130
    except BusyMachineError as err:
        print(f"{ap.prog}: {err} (--force records anyway, and says so in the provenance)", file=sys.stderr)
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
