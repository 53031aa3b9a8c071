"""The cost side of the four seed pairs on a CUDA GPU, with shape-faithful random weights.

    python scripts/gpu_cost.py                    # on a CUDA machine: writes data/results/gpu_cost.json
    python scripts/gpu_cost.py --tiny --out X     # anywhere: tiny shapes on the CPU (what the tests run)

The speed of a forward pass depends on the shapes of the weights, not on their values, so
random weights (specdec.synthetic.random_model, built from the configs in data/configs) measure
what the real models would cost where their weights cannot be downloaded. For each pair this
measures, after a cached context of --context tokens:

* the draft's decode step (one token) and the target's decode step, whose ratio is the cost
  ratio c of the speedup law;
* the target's verification curve: one forward pass scoring n = 1, 2, 3, 5, 9 tokens
  (K + 1 for K = 0, 1, 2, 4, 8), relative to one decode step.

The pairs are gpt2 -> gpt2-xl, TinyLlama-1.1B -> Llama-3-8B, Phi-3-mini -> Llama-3-8B and an
nf4 (bitsandbytes) copy of Llama-3-8B -> Llama-3-8B. The two cross-tokenizer pairs cannot run
plain speculative decoding (their vocabularies differ); their cost side is measured all the
same, as the cost a cross-vocabulary method would pay. Weights are --dtype (float16 by
default; gpt2 sizes too). Acceptance rates need the real weights and are not measured here.

--tiny builds every architecture with tiny widths (2 layers, hidden 64, vocabulary 512) in
float32 on the CPU: the numbers mean nothing, the script and its output format are tested.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from specdec import bench, quant, registry, synthetic

REPO = Path(__file__).resolve().parents[1]
SEED_PAIRS = ("gpt2_dev", "tinyllama_llama3", "phi3_llama3", "llama3_self")
N_TOKENS = (1, 2, 3, 5, 9)

_TINY = {
    "gpt2": dict(n_embd=64, n_layer=2, n_head=2, vocab_size=512),
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


def build(key: str, tiny: bool, dtype: torch.dtype, device: str):
    """A random-weight model of architecture ``key``; tiny widths with ``tiny``."""
    if not tiny:
        return synthetic.random_model(key, dtype=dtype, device=device)
    from transformers import AutoModelForCausalLM

    model_type = registry.model_config(key).model_type
    config = registry.model_config(key, **_TINY[model_type])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


def measure_pair(name: str, tiny: bool, dtype: torch.dtype, device: str, context: int, repeats: int,
                 targets: dict) -> dict:
    pair = registry.get_pair(name)
    tkey = pair.target.config_key
    if tkey not in targets:
        t0 = time.perf_counter()
        model = build(tkey, tiny, dtype, device)
        curve = bench.measure_step_costs(model, N_TOKENS, context, repeats)
        targets[tkey] = (model, curve, time.perf_counter() - t0)
    target, curve, _ = targets[tkey]
    if pair.draft.quantization:
        # bitsandbytes quantises the target's own (random) weights, as load_hf would the real ones
        draft = quant.quantized_copy(target, pair.draft.quantization, device=device, compute_dtype=dtype)
    else:
        draft = build(pair.draft.config_key, tiny, dtype, device)
    draft_curve = bench.measure_step_costs(draft, (1,), context, repeats)
    del draft
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t_draft = float(draft_curve.seconds.iloc[0])
    t_target = float(curve.loc[curve.n_tokens == 1, "seconds"].iloc[0])
    return {
        "pair": name,
        "draft": pair.draft.key,
        "target": pair.target.key,
        "draft_quantization": pair.draft.quantization,
        "shares_vocabulary": pair.shares_vocabulary,
        "t_draft_step_s": t_draft,
        "t_target_step_s": t_target,
        "c": t_draft / t_target,
        "verify_curve": curve.to_dict(orient="records"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "data" / "results" / "gpu_cost.json"))
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, float32, CPU: a test of the script")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--context", type=int, default=512, help="cached tokens before each timed pass")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--pairs", default=",".join(SEED_PAIRS))
    args = ap.parse_args(argv)

    device = args.device or ("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else getattr(torch, args.dtype)
    if not args.tiny and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise SystemExit("the full shapes (up to 8B parameters) need a CUDA GPU; on a CPU run with --tiny, "
                         "which tests the script with tiny shapes")
    if args.tiny:
        torch.set_num_threads(1)  # tiny models: one thread avoids contention
        args.context = min(args.context, 32)
        args.repeats = min(args.repeats, 3)
    pairs = [p for p in args.pairs.split(",") if p]
    for p in pairs:
        if p not in SEED_PAIRS:
            raise SystemExit(f"unknown seed pair {p!r}; choose from {', '.join(SEED_PAIRS)}")

    command = "python scripts/gpu_cost.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    record = {
        "provenance": bench.provenance(command=command, device=device),
        "tiny": args.tiny,
        "weights": "random (shape-faithful, specdec.synthetic.random_model)" + (" with tiny widths" if args.tiny else ""),
        "dtype": str(dtype).removeprefix("torch."),
        "context_len": args.context,
        "repeats": args.repeats,
        "pairs": [],
    }
    targets: dict = {}
    for name in pairs:
        t0 = time.perf_counter()
        row = measure_pair(name, args.tiny, dtype, device, args.context, args.repeats, targets)
        row["wall_s"] = time.perf_counter() - t0
        record["pairs"].append(row)
        print(f"{name}: c = {row['c']:.3f}, verify(5 tokens)/step = "
              f"{next(r['relative'] for r in row['verify_curve'] if r['n_tokens'] == 5):.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
