"""specdec: speculative decoding from scratch, the shared library of the book.

One module per idea, in the order the book teaches them:

* :mod:`specdec.roofline`  -- FLOPs, bytes and arithmetic intensity of a decode step (ch. 1)
* :mod:`specdec.cache`     -- a model with its KV cache, and rolling it back (ch. 2)
* :mod:`specdec.sampling`  -- logits to probabilities, the rejection step (ch. 3)
* :mod:`specdec.drafters`  -- who proposes tokens: a model, or prompt lookup (ch. 4)
* :mod:`specdec.decoding`  -- the autoregressive and the speculative loop (ch. 4)
* :mod:`specdec.models`    -- the pair registry and loaders (all chapters)
* :mod:`specdec.profiling` -- timers and memory per phase (ch. 5)
* :mod:`specdec.metrics`   -- GenerationResult and JSON lines (ch. 5-7)
* :mod:`specdec.prompts`   -- the prompt sets (ch. 6)
"""

__version__ = "0.1.0"
