"""The cost side without weights: forward passes of random-weight models of the real shapes.

Where a model's weights cannot be had (the hub's larger pairs, offline; a lent GPU), its cost
can: a model of the same config with random weights runs the same number of multiply-adds.

* :func:`measure_step_costs` -- seconds of a pass scoring ``n`` tokens, and v(n), as a table
  (timed by :func:`specdec.steptime.time_forwards`);
* :func:`layer_extrapolated_costs` -- a deep model's step time fitted from shallower copies.
"""

from __future__ import annotations

import numpy as np
import torch

from .registry import model_config
from .steptime import time_forwards
from .synthetic import random_model

__all__ = ["measure_step_costs", "layer_extrapolated_costs"]


def measure_step_costs(model, n_tokens=(1, 2, 3, 5, 9), context_len: int = 128, repeats: int = 5,
                       warmup: int = 2, seed: int = 0) -> "pd.DataFrame":
    """Median seconds of one forward pass scoring ``n`` new tokens after a cached context of
    ``context_len`` tokens, for each ``n`` in ``n_tokens`` (n = 1 is a decode step; n = K+1 a
    verification), timed by :mod:`specdec.steptime` (the cache is rolled back after every pass,
    so each sees the same context). Columns: ``n_tokens``, ``seconds``, ``relative`` (to n = 1
    if measured)."""
    import pandas as pd

    if context_len < 1 or not n_tokens or min(n_tokens) < 1:
        raise ValueError("need context_len >= 1 and n_tokens >= 1")
    seconds = time_forwards(model, list(n_tokens), context_len, repeats, warmup, seed, "step costs")["model"]
    out = pd.DataFrame([{"n_tokens": n, "seconds": float(np.median(seconds[n]))} for n in n_tokens])
    one = out.loc[out.n_tokens == 1, "seconds"]
    out["relative"] = out.seconds / one.iloc[0] if len(one) else np.nan
    return out


def layer_extrapolated_costs(key: str, layer_counts=(1, 2), n_tokens=(1, 2, 3, 5, 9), context_len: int = 128,
                             repeats: int = 5, dtype=torch.float32, device: str = "cpu") -> "pd.DataFrame":
    """Forward-pass time of random-weight model ``key`` at its full depth, extrapolated from
    shallower copies: the time is fitted as ``a + b * layers`` (embeddings and output head plus
    identical decoder layers) by least squares over ``layer_counts`` and evaluated at the real
    layer count. Columns as :func:`measure_step_costs`, plus ``layers`` and ``extrapolated``
    (True) -- label the numbers as extrapolated wherever they are shown."""
    import pandas as pd

    if len(set(layer_counts)) < 2:
        raise ValueError("need at least two different layer counts to fit a + b * layers")
    full = model_config(key).get_text_config(decoder=True).num_hidden_layers
    measured = []
    for L in layer_counts:
        m = random_model(key, dtype=dtype, device=device, num_layers=L)
        t = measure_step_costs(m, n_tokens, context_len, repeats)
        t["layers"] = L
        measured.append(t)
        del m
    meas = pd.concat(measured)
    rows = []
    for n, g in meas.groupby("n_tokens"):
        b, a = np.polyfit(g.layers.to_numpy(float), g.seconds.to_numpy(), 1)
        rows.append({"n_tokens": n, "seconds": a + b * full})
    out = pd.DataFrame(rows)
    out["relative"] = out.seconds / out.loc[out.n_tokens == 1, "seconds"].iloc[0] if 1 in set(out.n_tokens) else np.nan
    out["layers"] = full
    out["extrapolated"] = True
    return out
