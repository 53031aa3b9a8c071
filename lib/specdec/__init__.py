"""specdec: speculative decoding from scratch, the shared library of the book.

One module per idea, in the order the book teaches them:

* :mod:`specdec.roofline`  -- FLOPs, bytes and arithmetic intensity of a decode step (ch. 1)
* :mod:`specdec.cache`     -- a model with its KV cache (preallocated or dynamic), and rolling it back (ch. 2)
* :mod:`specdec.sampling`  -- logits to probabilities, the rejection step (ch. 3)
* :mod:`specdec.drafters`  -- who proposes tokens: a model, or prompt lookup (ch. 4)
* :mod:`specdec.decoding`  -- the autoregressive and the speculative loop (ch. 4)
* :mod:`specdec.display`   -- one generation drawn round by round: accepted, rejected, corrections (ch. 4)
* :mod:`specdec.theory`    -- the speedup law and the best K (ch. 3-4)
* :mod:`specdec.registry`  -- architecture configs, the models and pairs, vocabulary checks (all chapters)
* :mod:`specdec.loaders`   -- loading registered models: the hub, the packaged SmolLM2 (all chapters)
* :mod:`specdec.synthetic` -- first-layers drafts, random-weight models, synthetic pairs (ch. 2-9)
* :mod:`specdec.quant`     -- weight-only quantized copies of a model, as drafts (ch. 9)
* :mod:`specdec.profiling` -- timers and memory per phase (ch. 5)
* :mod:`specdec.fastpath`  -- the target's compute path (dtype, packed weights), chosen by measuring (ch. 5)
* :mod:`specdec.enginebench` -- our loops against transformers' generate() in one run (ch. 5)
* :mod:`specdec.hfpeers`   -- transformers' generate(), timed as our loops are (ch. 5-7, 10)
* :mod:`specdec.metrics`   -- GenerationResult, the one speedup definition, JSON lines (ch. 5-7)
* :mod:`specdec.profiles`  -- the workload switch SPECDEC_PROFILE and its sweeps (all chapters)
* :mod:`specdec.bench`     -- the benchmark harness: sweeps, timing, provenance (ch. 6-7)
* :mod:`specdec.analysis`  -- results files to DataFrames: speedups, acceptance, costs (ch. 6-7)
* :mod:`specdec.plots`     -- the benchmark figures (ch. 6-7)
* :mod:`specdec.prompts`   -- the prompt sets, encoding a prompt, stop tokens (ch. 2-9)
* :mod:`specdec.crossvocab` -- speculation across vocabularies (ch. 8)
* :mod:`specdec.selfspec`  -- bytes and agreement of quantized self-speculation (ch. 9)
* :mod:`specdec.eagle`     -- a draft head on the target's hidden states, and its drafter (ch. 10)
* :mod:`specdec.headdata`  -- the head's training text: the target's answers and features (ch. 10)
* :mod:`specdec.headtrain` -- training the head with the training-time test; the recipe (ch. 10)
* :mod:`specdec.headablate` -- what each choice of the head buys, on one training budget (ch. 10)
* :mod:`specdec.headbench` -- the head against every drafter and transformers, interleaved (ch. 10-11)
* :mod:`specdec.trees`     -- token trees: mask, exact verification, shape from the verify cost (ch. 11)
* :mod:`specdec.cli`       -- command-line argument checks shared by the commands
* :mod:`specdec.book`      -- helpers for presenting results in the book
"""

__version__ = "0.1.0"
