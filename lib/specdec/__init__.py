"""specdec: speculative decoding from scratch, the shared library of the book.

One module per idea, in the order the book teaches them:

* :mod:`specdec.roofline`  -- FLOPs, bytes and arithmetic intensity of a decode step (ch. 1)
* :mod:`specdec.microbench` -- this machine's peaks and the products of a pass, measured (ch. 1)
* :mod:`specdec.steptime`  -- the one forward timer: a pass scoring n tokens, v(n) (ch. 1, 4, 5, 9-11)
* :mod:`specdec.cache`     -- a model with its KV cache (preallocated or dynamic), and rolling it back (ch. 2)
* :mod:`specdec.tokentree` -- a token tree, its attention mask and positions, growing one (ch. 11)
* :mod:`specdec.sampling`  -- logits to probabilities, the rejection step (ch. 3)
* :mod:`specdec.drafters`  -- who proposes tokens: a model, or prompt lookup (ch. 4)
* :mod:`specdec.decoding`  -- the autoregressive and the speculative loop, and the Generation they share (ch. 4)
* :mod:`specdec.display`   -- one generation drawn round by round: accepted, rejected, corrections (ch. 4)
* :mod:`specdec.theory`    -- the speedup law, the best K, planning chains and trees with measured costs (ch. 3-4, 11)
* :mod:`specdec.registry`  -- architecture configs, the models and pairs, vocabulary checks (all chapters)
* :mod:`specdec.loaders`   -- loading registered models: the hub, the packaged SmolLM2 (all chapters)
* :mod:`specdec.synthetic` -- first-layers drafts, random-weight models, synthetic pairs (ch. 2-9)
* :mod:`specdec.quant`     -- weight-only quantized copies of a model, as drafts (ch. 9)
* :mod:`specdec.profiling` -- timers and memory per phase (ch. 5)
* :mod:`specdec.fastpath`  -- the target's compute path (dtype, packed weights), chosen by measuring (ch. 5)
* :mod:`specdec.enginebench` -- our loops against transformers' generate() in one run (ch. 5)
* :mod:`specdec.hfpeers`   -- transformers' generate(), timed as our loops are (ch. 5-7, 10)
* :mod:`specdec.metrics`   -- GenerationResult, JSON lines, and the one definition of each figure: c, tau,
  acceptance rate, acceptance by position and survival, v(n), a speedup (ch. 4-7)
* :mod:`specdec.provenance` -- how a result was made, the quiet-machine check, the repository's paths
* :mod:`specdec.profiles`  -- the workload switch SPECDEC_PROFILE and its sweeps (all chapters)
* :mod:`specdec.pairs`     -- the one loaded pair, whatever its drafter (ch. 6-8)
* :mod:`specdec.sweepplan` -- what a sweep runs: pairs x domains x K (ch. 6)
* :mod:`specdec.bench`     -- the benchmark harness: running sweeps, resuming, records (ch. 6-7)
* :mod:`specdec.stepcosts` -- the cost side without weights: random-weight models of the real shapes (ch. 6)
* :mod:`specdec.analysis`  -- results files to DataFrames: speedups, acceptance, costs (ch. 6-7)
* :mod:`specdec.plots`     -- the benchmark figures (ch. 6-7)
* :mod:`specdec.prompts`   -- the prompt sets, encoding a prompt, stop tokens (ch. 2-9)
* :mod:`specdec.vocabs`    -- tokens as bytes; the chapter's trained tokenizers and the hub's (ch. 8)
* :mod:`specdec.crossvocab` -- speculation across vocabularies (ch. 8)
* :mod:`specdec.selfspec`  -- bytes and agreement of quantized self-speculation (ch. 9)
* :mod:`specdec.eagle`     -- a draft head on the target's hidden states, and its drafter (ch. 10)
* :mod:`specdec.headdata`  -- the head's training text: prompts, reference text, features (ch. 10)
* :mod:`specdec.headanswers` -- the target's answers to the training prompts, in resumable parts (ch. 10)
* :mod:`specdec.headloss`  -- the unrolled loss and the held-out figures of a head (ch. 10)
* :mod:`specdec.headtrain` -- training the head: schedule, early stop, checkpoints; the recipe (ch. 10)
* :mod:`specdec.headablate` -- what each choice of the head buys, on the same data and budget (ch. 10)
* :mod:`specdec.headbench` -- the head against every drafter and transformers, interleaved (ch. 10-11)
* :mod:`specdec.trees`     -- token trees: mask, exact verification, shape from the verify cost (ch. 11)
* :mod:`specdec.cli`       -- command-line argument checks shared by the commands
* :mod:`specdec.book`      -- helpers for presenting results in the book
"""

__version__ = "0.1.0"
