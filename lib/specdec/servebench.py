"""Speculation in a serving engine under load, beside our own batched loop (chapter 12).

One command records everything the chapter reads (``python -m specdec.servebench --out
data/results/serving_cpu.json``), on SmolLM2-135M-Instruct, our loop on the path measured fastest
here (:func:`specdec.fastpath.choose_path`) and vLLM in the same dtype:

* **same model, same answer** -- our autoregressive loop and vLLM, greedy, on the benchmark
  prompts: the tokens compared, and where they differ, how close the target's two best tokens
  were there (:func:`near_tie`);
* **the engine's figures beside the book's** -- vLLM's speculative counters over the prompts
  answered one at a time with its prompt lookup and with the book's draft head exported in
  EAGLE-3's format (:func:`specdec.serving.engine_figures`, :mod:`specdec.eagle3export`), and
  our loop's tau and acceptance by position with the same drafters (prompt lookup takes the
  longest n-gram at its earliest occurrence, as vLLM's proposer does; our loop drafts so here
  throughout);
* **under load** -- a bounded load of streamed requests at each concurrency (or a request rate,
  Poisson arrivals), with and without speculation: throughput, time to first token, time per
  output token, the gap between chunks (:func:`run_load`, :func:`summarise_load`);
* **our loop at batch B** -- :func:`specdec.batchdecoding.batch_generate` on the same requests,
  batched ``B`` at a time, with and without prompt lookup;
* **the prediction** -- where speculation should stop paying, from the book's law with the cost
  of a batched pass measured here (:func:`predict_batch_speedup`).

Every configuration is repeated (``repeats``), the server's settings taking turns to go first; a
server is stopped before our loop runs, so that the two never share the cores.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
import torch
from tqdm.auto import tqdm

from .serving import Completion, ServeConfig, VLLMServer

__all__ = ["run_load", "summarise_load", "our_batch_load", "predict_batch_speedup", "near_tie",
           "first_difference", "serving_report", "main"]


def run_load(server: VLLMServer, prompts: list[list[int]], concurrency: int, n_requests: int, max_tokens: int,
             rate: float | None = None, seed: int = 0, max_seconds: float = 600.0,
             progress: bool = True) -> tuple[list[Completion], float]:
    """Send ``n_requests`` streamed requests (the prompts in turn, each generating ``max_tokens``
    tokens, end-of-text ignored) with at most ``concurrency`` in flight; with ``rate`` (requests
    per second) they arrive at Poisson times, otherwise all at once. Requests not started within
    ``max_seconds`` are not sent. Returns the completions and the wall time from the first
    request to the last answer."""
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
    if not isinstance(n_requests, int) or n_requests < 1:
        raise ValueError(f"n_requests must be a positive int, got {n_requests!r}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive (requests per second), got {rate!r}")
    if not prompts:
        raise ValueError("need at least one prompt")
    rng = np.random.default_rng(seed)
    arrivals = np.zeros(n_requests) if rate is None else np.cumsum(rng.exponential(1 / rate, n_requests))
    bar = tqdm(total=n_requests, desc=f"load c={concurrency}", leave=False, disable=not progress)
    lock = threading.Lock()
    halt = threading.Event()  # set on Ctrl-C or an error: requests not yet sent are dropped
    t0 = time.perf_counter()

    def one(i):
        if halt.wait(max(0.0, arrivals[i] - (time.perf_counter() - t0))):
            return None
        if time.perf_counter() - t0 > max_seconds:
            return None
        c = server.complete(prompts[i % len(prompts)], max_tokens, ignore_eos=True)
        c.meta.update(request=i, arrival=float(arrivals[i]))
        with lock:
            bar.update(1)
        return c

    pool = ThreadPoolExecutor(max_workers=concurrency)
    futures = [pool.submit(one, i) for i in range(n_requests)]
    try:
        # wait in short slices, so that Ctrl-C reaches the caller (whose ``with VLLMServer`` then
        # stops the server) instead of waiting for every queued request
        while True:
            finished, pending = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()
            if not pending:
                break
        done = [c for c in (f.result() for f in futures) if c is not None]
    except BaseException:
        halt.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    end = max((c.sent_at + c.latency for c in done), default=t0)
    return done, end - t0


def _pct(values, q):
    values = [v for v in values if v == v]
    return float(np.percentile(values, q)) if values else float("nan")


def summarise_load(completions: list[Completion], wall: float) -> dict:
    """Throughput (output tokens per second of wall time, and requests per second); time to
    first token, time per output token and the gap between chunks, p50 and p95 (seconds); tokens
    per chunk (1 without speculation; the accepted drafts plus one with it)."""
    tokens = sum(len(c.tokens) for c in completions)
    itl = [g for c in completions for g in c.itl]
    chunks = [n for c in completions for n in c.chunk_tokens[1:]]  # the first chunk is the prefill's
    return dict(requests=len(completions), tokens=tokens, wall_s=wall,
                throughput=tokens / wall if wall > 0 else float("nan"),
                request_rate=len(completions) / wall if wall > 0 else float("nan"),
                ttft_p50=_pct([c.ttft for c in completions], 50), ttft_p95=_pct([c.ttft for c in completions], 95),
                tpot_p50=_pct([c.tpot for c in completions], 50), tpot_p95=_pct([c.tpot for c in completions], 95),
                itl_p50=_pct(itl, 50), itl_p95=_pct(itl, 95),
                tokens_per_chunk=float(np.mean(chunks)) if chunks else float("nan"))


def our_batch_load(model, prompts: list[list[int]], batch: int, n_requests: int, max_tokens: int, drafter=None,
                   k: int = 4) -> dict:
    """Our loop serving the same ``n_requests`` requests ``batch`` at a time (static batches,
    end-of-text ignored as in :func:`run_load`): output tokens per second, the seconds spent in
    the batches' prefill passes, tau and the share of row-rounds that drafted."""
    from .batchdecoding import batch_generate
    from .metrics import tokens_per_round

    reqs = [prompts[i % len(prompts)] for i in range(n_requests)]
    t0 = time.perf_counter()
    results, prefill = [], 0.0
    for s in range(0, n_requests, batch):
        out = batch_generate(model, reqs[s: s + batch], max_tokens, drafter=drafter, k=k)
        prefill += out[0].phase_s.get("prefill", 0.0)  # one prefill pass for the whole batch
        results += out
    wall = time.perf_counter() - t0
    drafted = [d for r in results for d in r.drafted_per_round]
    accepted = [a for r in results for a in r.accepted_per_round]
    return dict(batch=batch, requests=n_requests, tokens=sum(len(r.tokens) for r in results), wall_s=wall,
                throughput=sum(len(r.tokens) for r in results) / wall, prefill_s=prefill,
                tau=tokens_per_round(drafted, accepted),
                **row_rounds(drafted, accepted))


def row_rounds(drafted: list[int], accepted: list[int]) -> dict:
    """The law's inputs from every row-round: tokens gained per round (the accepted drafts plus
    the target's own token, rounds without a draft included) and the share of rounds that drafted."""
    return dict(tokens_per_row_round=(sum(accepted) + len(accepted)) / len(accepted) if accepted else None,
                drafting_share=sum(d > 0 for d in drafted) / len(drafted) if drafted else None)


def predict_batch_speedup(tokens_per_row_round: float, drafting_share: float, batch_costs: dict, k: int,
                          c: float = 0.0) -> dict:
    """The law at batch ``B`` (:func:`specdec.theory.predicted_speedup`): a row gains
    ``tokens_per_row_round`` tokens per round (all rounds, those without a draft too) as at
    batch 1; a round costs the batch's verify pass of ``K + 1`` tokens per row,
    ``batch_costs[B]["v"][K + 1]`` of its decode steps, when any row drafts -- with probability
    ``1 - (1 - drafting_share)^B`` -- and one decode step otherwise. Drafting costs ``k`` steps
    of ``c`` decode steps each in the rounds that draft (prompt lookup: c = 0; a draft model or
    head: its c at batch 1, assumed to keep its ratio to the decode step as the batch grows).
    Returns ``{B: predicted speedup over batched decoding}``."""
    from .theory import predicted_speedup

    out = {}
    for b, cost in batch_costs.items():
        b = int(b)
        any_draft = 1 - (1 - drafting_share) ** b
        v_k = {int(n): x for n, x in cost["v"].items()}[k + 1]  # keys may be strings, read back from JSON
        v = any_draft * v_k + (1 - any_draft)
        out[b] = float(predicted_speedup(tokens_per_row_round, v, c, any_draft * k))
    return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (the shorter one's end counts), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def near_tie(model, prompt: list[int], tokens: list[int], at: int) -> dict:
    """The target's view of position ``at`` of a generation: its two best tokens and the gap
    between their logits (a gap near zero is a near-tie that kernel rounding can flip)."""
    from .cache import CachedLM

    logits = CachedLM(model).logits(list(prompt) + list(tokens[:at]), n_last=1)[0].float()
    top = torch.topk(logits, 2)
    return dict(position=at, top=top.indices.tolist(), gap=float(top.values[0] - top.values[1]))


def serving_report(n_per_domain: int = 4, max_tokens: int = 64, concurrency=(1, 2, 4, 8, 16), repeats: int = 3,
                   k: int = 4, ngram=(1, 3), rates=(), progress: bool = True,
                   reserved_cpus: int | None = None, head: bool = True) -> dict:
    """Record every figure of chapter 12 (see the module's docstring); each load has
    ``max(2 * concurrency, number of prompts)`` requests. ``reserved_cpus``: how many cores vLLM
    keeps for its scheduler (None: its default). ``head``: also serve with the book's draft head,
    exported in EAGLE-3's format (:mod:`specdec.eagle3export`)."""
    import tempfile

    from .decoding import autoregressive_generate, speculative_generate
    from .drafters import NGramDrafter
    from .eagle import EagleDrafter, load_book_head
    from .eagle3export import export_eagle3
    from .fastpath import choose_path, prepare
    from .headbench import head_step_cost
    from .loaders import load_smollm2, smollm2_dir
    from .metrics import acceptance_by_position, survival_by_position, tokens_per_round
    from .prompts import DOMAINS, encode_prompt, load_prompts, stop_token_ids
    from .serving import engine_figures, spec_metrics, vllm_version
    from .steptime import batch_verify_costs

    model, tokenizer = load_smollm2()
    book_head = load_book_head(model) if head else None
    path, _ = choose_path(model)  # our loop runs on the fastest path measured here ...
    model = prepare(model, path)
    dtype = path.dtype  # ... and vLLM in the same dtype
    stops = stop_token_ids(tokenizer, model)
    prompts = [(d, p["id"], encode_prompt(tokenizer, p["prompt"]).tolist())
               for d in DOMAINS for p in load_prompts(d, n_per_domain)]
    ids = [p for _, _, p in prompts]
    base = dict(model_dir=str(smollm2_dir()), dtype=dtype, k=k, ngram_min=ngram[0], ngram_max=ngram[1],
                name="smollm2", reserved_cpus=reserved_cpus, max_num_seqs=max(max(concurrency), 16))
    configs = {"plain": ServeConfig(**base), "ngram": ServeConfig(**base, method="ngram")}

    def lookup():  # prompt lookup as vLLM's proposer does it: the longest n-gram, its earliest occurrence
        return NGramDrafter(ngram[1], ngram[0], prefer="earliest")

    drafters = {"ngram": lookup}
    scratch = tempfile.TemporaryDirectory(prefix="specdec-eagle3-")  # removed when the report is done
    if book_head is not None:
        head_dir = export_eagle3(book_head, scratch.name, model.config)
        configs["eagle3"] = ServeConfig(**base, method="eagle3", draft_dir=str(head_dir))
        drafters["eagle3"] = lambda: EagleDrafter(book_head)

    ours = [autoregressive_generate(model, torch.tensor(p), max_tokens, stop_ids=stops).tokens for p in ids]
    report = dict(vllm_version=vllm_version(), k=k, ngram=list(ngram), dtype=dtype, path=path.label,
                  max_tokens=max_tokens, concurrency=list(concurrency), rates=list(rates), repeats=repeats,
                  methods=list(configs), prompts=[dict(domain=d, id=i) for d, i, _ in prompts],
                  identity=[], load=[], ours_batch=[], server_start_s=[], ours_tokens=ours,
                  engine_figures={}, ours_figures={}, vllm_tokens={})
    for name, make in drafters.items():  # our loop, one prompt at a time: the figures the engine reports
        runs = [speculative_generate(model, make(), torch.tensor(p), max_tokens, k, stop_ids=stops) for p in ids]
        drafted = [d for r in runs for d in r.drafted_per_round]
        accepted = [a for r in runs for a in r.accepted_per_round]
        report["ours_figures"][name] = dict(
            tau=tokens_per_round(drafted, accepted), acceptance_by_position=acceptance_by_position(drafted, accepted),
            survival_by_position=survival_by_position(drafted, accepted, k), drafts=sum(d > 0 for d in drafted),
            draft_tokens=sum(drafted), accepted_tokens=sum(accepted),
            **row_rounds(drafted, accepted),
            same_as_greedy=sum(r.tokens == o for r, o in zip(runs, ours)))

    names = list(configs)
    for rep in range(repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]  # each setting first in turn
        for name in order:
            with VLLMServer(configs[name]) as server:
                report["server_start_s"].append(dict(method=name, repeat=rep, seconds=server.start_seconds))
                report["vllm_threads"] = server.thread_binding()
                server.complete(ids[0], 8)  # warm-up
                if rep == 0:  # one at a time: the answers, and the engine's counters
                    before = spec_metrics(server.metrics_text())
                    theirs = [server.complete(p, max_tokens).tokens for p in ids]
                    report["vllm_tokens"][name] = theirs
                    if name != "plain":
                        report["engine_figures"][name] = engine_figures(before, spec_metrics(server.metrics_text()))
                    for (d, pid, p), a, b in zip(prompts, ours, theirs):
                        at = first_difference(a, b)
                        row = dict(method=name, domain=d, id=pid, identical=at is None, n_ours=len(a), n_vllm=len(b))
                        if at is not None and at < min(len(a), len(b)):
                            row.update(first_difference=at, vllm_token=b[at], ours_token=a[at],
                                       **{f"target_{k_}": v for k_, v in near_tie(model, p, a, at).items()})
                        report["identity"].append(row)
                loads = [("concurrency", c, None) for c in concurrency] + [("rate", max(concurrency), r)
                                                                           for r in rates]
                for kind, c, rate in loads:
                    n_req = max(2 * c, len(ids))
                    done, wall = run_load(server, ids, c, n_req, max_tokens, rate=rate, seed=rep, progress=progress)
                    report["load"].append(dict(engine="vllm", method=name, kind=kind, concurrency=c, rate=rate,
                                               repeat=rep, **summarise_load(done, wall)))
        # the server is stopped: our loop has the cores. Our batched loop drafts by prompt lookup
        # (the head needs each row's target features, which the batched cache does not keep)
        our_batch_load(model, ids[:1], 1, 1, 8)  # warm-up
        for c in concurrency:
            n_req = max(2 * c, len(ids))
            for name in ([n for n in order if n in ("plain", "ngram")]):
                drafter = lookup() if name == "ngram" else None
                report["ours_batch"].append(dict(engine="ours", method=name, repeat=rep,
                                                 **our_batch_load(model, ids, c, n_req, max_tokens, drafter, k)))
    report["batch_costs"] = {int(b): v for b, v in batch_verify_costs(model, concurrency, (1, k + 1)).items()}
    report["prediction"] = {}
    for name, fig in report["ours_figures"].items():  # the law, fed our loop's batch-1 figures
        c = head_step_cost(book_head, model) if name == "eagle3" else 0.0
        report["prediction"][name] = dict(
            tokens_per_row_round=fig["tokens_per_row_round"], drafting_share=fig["drafting_share"], c=c,
            speedup=predict_batch_speedup(fig["tokens_per_row_round"], fig["drafting_share"],
                                          report["batch_costs"], k, c))
    return report


def main(argv=None) -> int:
    from . import cli
    from .provenance import require_quiet, write_report
    from .serving import ServerError

    ap = cli.ArgumentParser(prog="python -m specdec.servebench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the results as JSON, e.g. data/results/serving_cpu.json")
    ap.add_argument("--n-per-domain", type=cli.positive_int, default=4)
    ap.add_argument("--max-tokens", type=cli.positive_int, default=64)
    ap.add_argument("--concurrency", type=cli.int_list(1, 256), default=[1, 2, 4, 8, 16])
    ap.add_argument("--rates", type=cli.float_list(0.0, 1000.0, min_open=True), default=[],
                    help="request rates (per second) to sweep at the largest concurrency, Poisson arrivals")
    ap.add_argument("--repeats", type=cli.positive_int, default=3)
    ap.add_argument("--k", type=cli.int_range(1, 16), default=4)
    ap.add_argument("--no-head", action="store_true", help="leave out the book's draft head (EAGLE-3 in vLLM)")
    ap.add_argument("--force", action="store_true", help="record under data/results although the machine is busy")
    args = ap.parse_args(argv)
    load_before = require_quiet(args.out, args.force) if args.out else None
    try:
        report = serving_report(args.n_per_domain, args.max_tokens, args.concurrency, args.repeats, args.k,
                                rates=args.rates, head=not args.no_head)
    except (ServerError, ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    if args.out:
        write_report(report, args.out, None, load_before, args.force)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
