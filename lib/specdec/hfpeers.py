"""``transformers``' own ``generate()``, timed as our loops are (chapters 6, 7, 10).

:func:`hf_generate` runs ``model.generate()`` -- plain, with ``prompt_lookup_num_tokens``, or with
an ``assistant_model`` -- and returns a :class:`specdec.metrics.GenerationResult` like our loops'
results: the wall clock around the whole call, the time to the first new token and each
token's arrival, read from a streamer (``generate()`` streams the prompt first, then each
batch of new tokens as it is accepted).
"""

from __future__ import annotations

import time

import torch

from .metrics import GenerationResult
from .sampling import GREEDY, SamplingParams

__all__ = ["hf_generate"]


class _TimingStreamer:
    """A transformers streamer that notes the time each batch of new tokens arrives."""

    def __init__(self, t0: float):
        self.t0, self.times, self.sizes, self._prompt_seen = t0, [], [], False

    def put(self, value):
        if not self._prompt_seen:  # generate() first streams the prompt itself
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter() - self.t0)
        self.sizes.append(int(value.numel()))

    def end(self):
        pass


def hf_generate(model, prompt: torch.Tensor, max_new_tokens: int, params: SamplingParams = GREEDY,
                stop_ids=frozenset(), method: str = "hf_autoregressive", seed: int = 0, **kwargs) -> GenerationResult:
    """``model.generate(prompt, **kwargs)`` with our sampling settings and stop tokens, timed.

    ``kwargs`` select the method: ``prompt_lookup_num_tokens=K`` (with
    ``max_matching_ngram_size``), or ``assistant_model=draft`` (with ``num_assistant_tokens``
    and its schedule). Token latencies: each streamed batch arrives at one time; its first
    token carries the gap, the others arrive with none.
    """
    stops = sorted(int(s) for s in stop_ids)
    options = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=not params.greedy,
                   eos_token_id=stops or None, pad_token_id=stops[0] if stops else 0)
    if not params.greedy:
        options.update(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    device = next(model.parameters()).device
    ids = prompt.view(1, -1).to(device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    streamer = _TimingStreamer(t0)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **options, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t0
    tokens = out[0, ids.shape[1]:].tolist()
    lat, prev = [], 0.0
    for t, size in zip(streamer.times, streamer.sizes):
        lat += [t - prev] + [0.0] * (size - 1)
        prev = t
    return GenerationResult(method=method, tokens=tokens, prompt_tokens=int(ids.shape[1]), total_s=total,
                            ttft_s=streamer.times[0] if streamer.times else total,
                            token_latencies_s=lat[: len(tokens)], meta={"streamed_batches": streamer.sizes})
