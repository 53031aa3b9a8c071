"""specdec.display: a speculative generation taken apart into rounds and drawn as HTML and text."""

from html.parser import HTMLParser

import pytest
import torch

from specdec.decoding import autoregressive_generate, speculative_generate
from specdec.display import KINDS, generation_rounds, render_generation
from specdec.drafters import ModelDrafter, NGramDrafter
from specdec.metrics import GenerationResult
from specdec.sampling import SamplingParams

from .helpers import tiny_llama


def made_up(tokens, proposed, accepted):
    return GenerationResult("speculative", tokens, 3, 1.0, 0.1, [0.1] * len(tokens),
                            drafted_per_round=[len(p) for p in proposed], accepted_per_round=accepted,
                            proposed_per_round=proposed, meta={"drafter": "test", "k": 4})


# prefill 10; round 1 keeps 1 2, rejects 9 (then 8 unjudged), the target corrects with 7;
# round 2 drafts nothing, the target adds 8; round 3 keeps 3 4 5 and gets the bonus 6
KNOWN = made_up([10, 1, 2, 7, 8, 3, 4, 5, 6], [[1, 2, 9, 8], [], [3, 4, 5]], [2, 0, 3])


class Spans(HTMLParser):
    """Collects the token boxes (class sd-tok), the legend keys and the table rows."""

    def __init__(self):
        super().__init__()
        self.rows, self.tokens, self.keys, self.in_text, self.text_tokens = [], [], [], False, []
        self._row = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "tr" and "sd-round" in classes:
            self._row = int(a["data-round"])
            self.rows.append(self._row)
        if tag == "div" and "sd-text" in classes:
            self.in_text = True
        if tag == "span" and "sd-tok" in classes:
            kind = next(c[3:] for c in classes if c.startswith("sd-") and c != "sd-tok")
            entry = (self._row, kind, int(a["data-token"]))
            (self.text_tokens if self.in_text else self.tokens).append(entry)
        if tag == "span" and "sd-key" in classes:
            self.keys.append(next(c[3:] for c in classes if c.startswith("sd-") and c != "sd-key"))

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "div":
            self.in_text = False


def parse(view):
    p = Spans()
    p.feed(view.html)
    return p


def test_known_generation_is_split_into_its_rounds():
    first, rounds = generation_rounds(KNOWN)
    assert (first.token, first.kind) == (10, "prefill")
    kinds = [[(p.token, p.kind) for p in r.pieces] for r in rounds]
    assert kinds == [
        [(1, "accepted"), (2, "accepted"), (9, "rejected"), (8, "discarded"), (7, "correction")],
        [(8, "bonus")],
        [(3, "accepted"), (4, "accepted"), (5, "accepted"), (6, "bonus")],
    ]
    assert [first.token] + [t for r in rounds for t in r.emitted] == KNOWN.tokens
    assert [(r.index, r.drafted, r.accepted) for r in rounds] == [(1, 4, 2), (2, 0, 0), (3, 3, 3)]


def test_html_puts_every_token_in_its_class_and_has_a_legend():
    view = render_generation(KNOWN, lambda t: f"w{t}", prompt="PROMPT", title="A test")
    p = parse(view)
    assert p.rows == [1, 2, 3]
    assert sorted(p.keys) == sorted(KINDS)  # every kind explained
    table = [(row, kind, tok) for row, kind, tok in p.tokens]
    assert table == [(None, "prefill", 10),
                     (1, "accepted", 1), (1, "accepted", 2), (1, "rejected", 9), (1, "discarded", 8),
                     (1, "correction", 7), (2, "bonus", 8),
                     (3, "accepted", 3), (3, "accepted", 4), (3, "accepted", 5), (3, "bonus", 6)]
    # the text below the table holds exactly the emitted tokens, in order
    assert [tok for _, _, tok in p.text_tokens] == KNOWN.tokens
    assert {k for _, k, _ in p.text_tokens} <= {"prefill", "accepted", "correction", "bonus"}
    assert "PROMPT" in view.html and "A test" in view.html and view._repr_html_() == view.html
    # readable without colour: strikes are elements, corrections and bonus tokens carry marks
    assert "<s>w9</s>" in view.html and "<del><i>w8</i></del>" in view.html
    assert "[w7]" in view.html and "{w6}" in view.html and "(w10)" in view.html


def test_plain_text_marks_each_kind():
    text = str(render_generation(KNOWN, lambda t: f"w{t}"))
    assert "(w10)" in text
    assert "w1 w2 ~~w9~~ ~w8~ [w7]" in text
    assert "{w8}" in text and "w3 w4 w5 {w6}" in text
    assert "3 rounds (drafter = test, k = 4): 5 of 7 drafted tokens accepted, 9 tokens emitted" in text


def test_token_text_is_escaped_and_whitespace_shown():
    words = {1: "<b>&", 2: "\n", 3: "   "}
    view = render_generation(KNOWN, lambda t: words.get(t, f"w{t}"), max_rounds=1)
    assert "&lt;b&gt;&amp;" in view.html and "<b>&" not in view.html
    assert "↵" in view.html and "↵" in view.text
    assert "␣␣␣" in view.html  # a token of spaces shows them
    assert "2 more rounds not shown" in view.text and parse(view).rows == [1]


def test_a_stop_inside_the_accepted_prefix_discards_the_rest():
    # the last round accepted 3 4 5 but the loop stopped after 4 (a stop token)
    r = made_up([10, 1, 2, 7, 3, 4], [[1, 2, 9], [3, 4, 5]], [2, 3])
    _, rounds = generation_rounds(r)
    assert [(p.token, p.kind) for p in rounds[-1].pieces] == [(3, "accepted"), (4, "accepted"),
                                                               (5, "discarded")]


def test_results_without_proposals_or_inconsistent_ones_are_refused():
    old = GenerationResult.from_dict({k: v for k, v in KNOWN.to_dict().items() if k != "proposed_per_round"})
    assert old.proposed_per_round == []  # an older file still loads...
    with pytest.raises(ValueError, match="proposals"):
        render_generation(old)  # ...but cannot be drawn
    ar = autoregressive_generate(tiny_llama(seed=0), torch.tensor([5, 6, 7]), 5)
    with pytest.raises(ValueError, match="autoregressive"):
        render_generation(ar)
    bad = made_up([10, 1, 5, 7], [[1, 2, 9]], [2])  # claims 2 accepted, but emitted 1 5
    with pytest.raises(ValueError, match="accepted proposals"):
        generation_rounds(bad)


@pytest.mark.parametrize("drafter_name", ["model", "ngram"])
def test_real_generations_render_round_for_round(tiny_target, drafter_name):
    prompt = torch.tensor([5, 9, 17, 5, 9, 17, 5, 9, 40, 41, 42, 5, 9])
    drafter = NGramDrafter() if drafter_name == "ngram" else ModelDrafter(tiny_llama(seed=0, n_layers=2))
    out = speculative_generate(tiny_target, drafter, prompt, 30, 4, SamplingParams(temperature=1.0), seed=1)
    p = parse(render_generation(out))
    assert p.rows == list(range(1, len(out.accepted_per_round) + 1))
    assert [tok for _, _, tok in p.text_tokens] == out.tokens
    for i, (proposed, n) in enumerate(zip(out.proposed_per_round, out.accepted_per_round), 1):
        row = [(kind, tok) for r, kind, tok in p.tokens if r == i]
        assert [tok for kind, tok in row if kind in ("accepted", "rejected", "discarded")] == proposed
        assert sum(kind == "accepted" for kind, _ in row) == n
        assert sum(kind in ("correction", "bonus") for kind, _ in row) == 1
        assert [kind for kind, _ in row if kind in ("correction", "bonus")] == (
            ["correction"] if n < len(proposed) else ["bonus"])
