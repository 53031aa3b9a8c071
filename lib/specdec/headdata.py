"""The training data of chapter 10's draft head: the target's own text and features.

1. :func:`load_train_prompts` -- the training prompts (``data/train/prompts.jsonl``, built by
   ``scripts/build_train_prompts.py`` from items no benchmark prompt uses).
2. The target answers them (:mod:`specdec.headanswers`, batched and resumable, kept in parts).
   :func:`reference_samples` adds text the target did not write -- the Python standard
   library's source and the Python documentation, installed offline -- on which the target's
   features and distributions are just as much the target's: more text for the same price as
   a feature pass, five times cheaper per token than generating.
3. :func:`draft_vocabulary` -- the most frequent tokens of those answers become the draft
   vocabulary (FR-Spec's frequency ranking), stop tokens always included.
4. :func:`extract_features` -- one teacher-forced pass of the target over every prompt and
   answer keeps, per position, the outputs of the head's feature layers, the target's final
   (normalised) hidden state, the log normaliser of its full-vocabulary softmax and its
   argmax. From the final state the target's probabilities on the draft vocabulary are
   recomputed exactly when needed (:mod:`specdec.headtrain`), so nothing of size ``V`` is
   stored.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import decoder_layers

__all__ = ["Sample", "train_prompts_file", "load_train_prompts", "reference_samples", "draft_vocabulary", "FeatureSet",
           "extract_features", "features_cache_dir", "cached_layers", "feature_cache_key",
           "cached_features"]

DOC_ROOT = Path("/usr/share/doc/python3.11/html")
#: documentation parts no benchmark prompt comes from (the summarisation prompts use tutorial and howto)
REFERENCE_DOCS = ("library", "reference", "whatsnew", "using", "extending", "distributing", "installing")


def train_prompts_file() -> Path:
    from .provenance import repo_root

    return repo_root() / "data" / "train" / "prompts.jsonl"


def load_train_prompts(domains=None, n_per_domain: int | None = None) -> list[dict]:
    """The training prompts (dicts with ``id``, ``domain``, ``prompt``, ``source``), in file
    order, optionally only ``domains`` and the first ``n_per_domain`` of each."""
    path = train_prompts_file()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; build it with `python scripts/build_train_prompts.py`")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if domains is not None:
        records = [r for r in records if r["domain"] in set(domains)]
    if n_per_domain is not None:
        seen: Counter = Counter()
        kept = []
        for r in records:
            if seen[r["domain"]] < n_per_domain:
                kept.append(r)
                seen[r["domain"]] += 1
        records = kept
    return records


@dataclass
class Sample:
    """One training text: the prompt's token ids (chat template applied), the target's
    answer, and the prompt's domain and id."""

    prompt: list[int]
    answer: list[int]
    domain: str = ""
    id: str = ""

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.answer


def _stdlib_chunks(tokenizer, chunk_tokens: int):
    """The standard library's top-level modules (not its tests), cut at line ends into pieces of
    about ``chunk_tokens`` tokens; one generator per module, in name order."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        if path.name.startswith(("_", "test")):
            continue
        yield _chunks(path.read_text(encoding="utf-8", errors="replace").splitlines(), tokenizer, chunk_tokens,
                      f"stdlib/{path.stem}")


def _doc_chunks(tokenizer, chunk_tokens: int):
    """The paragraphs of the documentation pages of :data:`REFERENCE_DOCS`, pieces of about
    ``chunk_tokens`` tokens; one generator per page, in name order."""
    import html.parser
    import re

    class Paragraphs(html.parser.HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.out, self.buf = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "p":
                self.buf = []

        def handle_endtag(self, tag):
            if tag == "p" and self.buf is not None:
                text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
                if text:
                    self.out.append(text)
                self.buf = None

        def handle_data(self, data):
            if self.buf is not None:
                self.buf.append(data)

    for d in REFERENCE_DOCS:
        for path in sorted((DOC_ROOT / d).glob("*.html")):
            parser = Paragraphs()
            parser.feed(path.read_text(encoding="utf-8", errors="replace"))
            yield _chunks(parser.out, tokenizer, chunk_tokens, f"docs/{d}/{path.stem}", sep="\n\n")


def _chunks(lines, tokenizer, chunk_tokens, name, sep="\n"):
    cur, n, i = [], 0, 0
    for line in lines:
        cost = len(tokenizer.encode(line + sep, add_special_tokens=False))
        if cur and n + cost > chunk_tokens:
            yield f"{name}#{i}", sep.join(cur)
            cur, n, i = [], 0, i + 1
        cur.append(line)
        n += cost
    if cur and n > chunk_tokens // 4:
        yield f"{name}#{i}", sep.join(cur)


def reference_samples(tokenizer, n_tokens: int, chunk_tokens: int = 384, progress: bool = True) -> list[Sample]:
    """About ``n_tokens`` tokens of text the target did not write, as training samples: pieces
    of the standard library's source ("code") and of the documentation's reference parts
    ("prose"), alternating, each the assistant's turn after a one-line request (so the target
    reads it where it reads its own answers). Deterministic for a given Python and
    documentation. Raises FileNotFoundError when the documentation is not installed."""
    import itertools

    from .prompts import encode_prompt

    if not DOC_ROOT.is_dir():
        raise FileNotFoundError(f"{DOC_ROOT} is missing: install Debian's python3.11-doc (make train-prompts does)")
    requests = {"code": encode_prompt(tokenizer, "Show me some Python source code.").tolist(),
                "prose": encode_prompt(tokenizer, "Tell me about Python.").tolist()}
    streams = {"code": itertools.chain.from_iterable(_stdlib_chunks(tokenizer, chunk_tokens)),
               "prose": itertools.chain.from_iterable(_doc_chunks(tokenizer, chunk_tokens))}
    out, total = [], 0
    bar = tqdm(total=n_tokens, desc="reference text", unit="tok", disable=not progress)
    for kind in itertools.cycle(("code", "prose")):
        if total >= n_tokens or not streams:
            break
        if kind not in streams:
            continue
        item = next(streams[kind], None)
        if item is None:
            del streams[kind]
            continue
        name, text = item
        ids = tokenizer.encode(text, add_special_tokens=False)[: chunk_tokens]
        out.append(Sample(requests[kind], ids, domain=f"reference-{kind}", id=name))
        total += len(ids)
        bar.update(len(ids))
    bar.close()
    return out


def draft_vocabulary(samples: list[Sample], size: int, always=()) -> torch.Tensor:
    """``d2t``: the ``size`` most frequent tokens of the answers (ties by id), every token of
    ``always`` included (first, then the rest by frequency)."""
    counts = Counter(t for s in samples for t in s.answer)
    ranked = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    keep = list(dict.fromkeys([int(t) for t in always] + ranked))
    if len(keep) < size:
        raise ValueError(f"the answers hold only {len(keep)} distinct tokens, fewer than a draft vocabulary "
                         f"of {size}: generate more text or choose a smaller vocabulary")
    return torch.tensor(keep[:size], dtype=torch.long)


@dataclass
class FeatureSet:
    """Per text: its tokens, where its answer starts, and per position the target's kept
    layers' outputs, final normalised hidden state, full-vocabulary log normaliser and argmax."""

    tokens: list[torch.Tensor] = field(default_factory=list)  # (T,) long
    starts: list[int] = field(default_factory=list)  # index of the answer's first token
    features: list[torch.Tensor] = field(default_factory=list)  # (T, layers * hidden), bfloat16
    finals: list[torch.Tensor] = field(default_factory=list)  # (T, hidden), bfloat16
    lse: list[torch.Tensor] = field(default_factory=list)  # (T,) float32
    argmax: list[torch.Tensor] = field(default_factory=list)  # (T,) long
    domains: list[str] = field(default_factory=list)
    feature_layers: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_answer_tokens(self) -> int:
        return sum(len(t) - s for t, s in zip(self.tokens, self.starts))

    def subset(self, indices) -> "FeatureSet":
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return FeatureSet(pick(self.tokens), pick(self.starts), pick(self.features), pick(self.finals),
                          pick(self.lse), pick(self.argmax), pick(self.domains), self.feature_layers)

    def with_layers(self, layers) -> "FeatureSet":
        """The same texts with only the features of ``layers`` (a subset of ``feature_layers``,
        in their order)."""
        layers = tuple(layers)
        if not set(layers) <= set(self.feature_layers) or list(layers) != sorted(layers):
            raise ValueError(f"layers {layers} must be ascending and among {self.feature_layers}")
        if layers == self.feature_layers:
            return self
        H = self.finals[0].shape[-1] if self.finals else 0
        cols = torch.cat([torch.arange(self.feature_layers.index(i) * H, (self.feature_layers.index(i) + 1) * H)
                          for i in layers])
        return FeatureSet(self.tokens, self.starts, [f[:, cols] for f in self.features], self.finals, self.lse,
                          self.argmax, self.domains, layers)

    def answers_cut(self, n: int) -> "FeatureSet":
        """The same texts with each answer cut to its first ``n`` tokens. No new pass is needed:
        under causal attention a position's features depend only on the tokens before it, so
        the cut texts' features are the first positions of the whole texts' features."""
        if n < 1:
            raise ValueError(f"an answer needs at least one token, not {n}")
        ends = [s + n for s in self.starts]
        cut = lambda xs: [x[:e] for x, e in zip(xs, ends)]  # noqa: E731
        return FeatureSet(cut(self.tokens), list(self.starts), cut(self.features), cut(self.finals),
                          cut(self.lse), cut(self.argmax), list(self.domains), self.feature_layers)

    @classmethod
    def concat(cls, sets: list["FeatureSet"]) -> "FeatureSet":
        """The texts of ``sets`` one after the other (same feature layers)."""
        if not sets:
            raise ValueError("nothing to concatenate")
        if len({fs.feature_layers for fs in sets}) > 1:
            raise ValueError("feature sets of different layers")
        out = cls(feature_layers=sets[0].feature_layers)
        for fs in sets:
            for k in ("tokens", "starts", "features", "finals", "lse", "argmax", "domains"):
                getattr(out, k).extend(getattr(fs, k))
        return out

    def save(self, path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, path)

    @classmethod
    def load(cls, path) -> "FeatureSet":
        return cls(**torch.load(path, weights_only=True))


def _lm_head_weight(model) -> torch.Tensor:
    """The LM head's weight ``(V, hidden)``, also on a path whose linear layers were repacked
    (:mod:`specdec.fastpath`): the input embedding when the two are tied."""
    weight = getattr(model.get_output_embeddings(), "weight", None)
    if weight is None and getattr(model.config, "tie_word_embeddings", False):
        weight = model.get_input_embeddings().weight
    if weight is None:
        raise ValueError("cannot read this model's LM head weight (repacked and not tied to the embedding)")
    return weight


@torch.inference_mode()
def extract_features(target, samples: list[Sample], feature_layers: tuple[int, ...], batch_tokens: int = 2048,
                     progress: bool = True) -> FeatureSet:
    """One teacher-forced pass of ``target`` over each sample's prompt and answer (batched
    by length, right-padded: causal attention keeps the padding out of real positions)."""
    layers = decoder_layers(target)
    norm = target.model.norm
    lm = _lm_head_weight(target)
    device = lm.device
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].tokens))
    fs = FeatureSet(feature_layers=tuple(feature_layers))
    slots: dict[int, tuple] = {}
    captured: list[torch.Tensor] = []
    hooks = [layers[i].register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for i in feature_layers]
    hooks.append(norm.register_forward_hook(lambda m, a, o: captured.append(o)))
    bar = tqdm(total=sum(len(s.tokens) for s in samples), desc="features", unit="tok", disable=not progress)
    try:
        b = 0
        while b < len(order):
            e = b + 1
            while e < len(order) and (e - b + 1) * len(samples[order[e]].tokens) <= batch_tokens:
                e += 1
            idx = order[b:e]
            width = len(samples[idx[-1]].tokens)
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(samples[i].tokens)] = torch.tensor(samples[i].tokens)
            captured.clear()
            target.model(input_ids=ids.to(device), use_cache=False)
            *feats, finals = captured
            feats = torch.cat(feats, -1)
            for row, i in enumerate(idx):
                T = len(samples[i].tokens)
                fin = finals[row, :T].float()
                logits = fin @ lm.float().T
                slots[i] = (feats[row, :T].to(torch.bfloat16).cpu(), fin.to(torch.bfloat16).cpu(),
                            torch.logsumexp(logits, -1).cpu(), logits.argmax(-1).cpu())
            bar.update(sum(len(samples[i].tokens) for i in idx))
            b = e
    finally:
        for h in hooks:
            h.remove()
        bar.close()
    for i, s in enumerate(samples):
        feat, fin, lse, arg = slots[i]
        fs.tokens.append(torch.tensor(s.tokens, dtype=torch.long))
        fs.starts.append(len(s.prompt))
        fs.features.append(feat)
        fs.finals.append(fin)
        fs.lse.append(lse)
        fs.argmax.append(arg)
        fs.domains.append(s.domain)
    return fs


def features_cache_dir() -> Path:
    """Where features are kept between runs: ``.cache/specdec/features`` in the repository
    (not committed: they are ten times the size of the answers and recomputed where missing)."""
    from .provenance import repo_root

    return repo_root() / ".cache" / "specdec" / "features"


def cached_layers(n_layers: int) -> tuple[int, ...]:
    """The layers whose features are cached: the head's three fused ones
    (:func:`specdec.eagle.default_feature_layers`) and the top one (EAGLE-1's input, an ablation
    of chapter 10), so that one pass of the target serves every head trained on them."""
    from .eagle import default_feature_layers

    return tuple(sorted(set(default_feature_layers(n_layers)) | {n_layers - 1}))


def feature_cache_key(target, path) -> str:
    """What the cached features of ``target`` computed on ``path`` (a :class:`specdec.fastpath.Path`)
    are filed under besides their layers and texts: the path, the model's class and depth. The head's
    recipe and its ablations call it, so they share one cache."""
    return f"{path.label}|{type(target).__name__}|{target.config.num_hidden_layers}"


def cached_features(target, groups: list[tuple[str, list[Sample]]], feature_layers: tuple[int, ...], key: str,
                    cache_dir=None, progress: bool = True, keep: tuple[int, ...] | None = None,
                    stats: dict | None = None) -> FeatureSet:
    """:func:`extract_features` of each named group of samples (an answers part, the reference
    text), read from ``cache_dir`` where an earlier run saved it under the same ``key`` (say
    the target's path and the layers) and number of texts, else computed and saved there: a
    stopped run loses at most the group in progress. The groups' features, concatenated, with
    only the layers ``keep`` (default: all of ``feature_layers``), dropped group by group so the
    whole set of cached layers is never in memory at once.

    ``stats`` (a dict), where given, receives how many groups were ``loaded`` and ``extracted``
    and ``extract_seconds``: the seconds the extraction of every group took when it was made,
    this run or an earlier one (recorded beside each cached file; a file cached without that
    record counts in ``untimed``)."""
    import hashlib

    cache_dir = features_cache_dir() if cache_dir is None else Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sets = []
    counts = dict(loaded=0, extracted=0, untimed=0, extract_seconds=0.0)
    for name, samples in tqdm(groups, desc="feature groups", disable=not progress or len(groups) < 2):
        digest = hashlib.sha1(json.dumps([key, list(feature_layers), [s.tokens for s in samples]]).encode()).hexdigest()
        path = cache_dir / f"{name}-{digest[:12]}.pt"
        timing = path.with_suffix(".json")
        if path.is_file():
            fs = FeatureSet.load(path)
            counts["loaded"] += 1
            if timing.is_file():
                counts["extract_seconds"] += json.loads(timing.read_text())["seconds"]
            else:
                counts["untimed"] += 1
        else:
            t0 = time.perf_counter()
            fs = extract_features(target, samples, feature_layers, progress=progress)
            seconds = time.perf_counter() - t0
            tmp = path.with_name(path.name + ".partial")
            fs.save(tmp)
            tmp.replace(path)
            timing.write_text(json.dumps(dict(seconds=seconds, texts=len(samples))) + "\n")
            counts["extracted"] += 1
            counts["extract_seconds"] += seconds
        sets.append(fs if keep is None else fs.with_layers(keep))
    if stats is not None:
        stats.update(counts)
    return FeatureSet.concat(sets)
