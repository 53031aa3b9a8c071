"""Seeing a speculative generation, round by round (chapter 4 on).

:func:`generation_rounds` takes a :class:`~specdec.metrics.GenerationResult` written by
:func:`specdec.decoding.speculative_generate` apart into rounds, and says where each token
came from: the target's first token (from the prefill), draft tokens the target accepted,
the draft token it rejected, the draft tokens after that one (thrown away unjudged), and the
one token the target adds per round -- a correction at a rejection, or a bonus token when
every proposal survived. :func:`render_generation` draws that as HTML for a notebook or the
built book (inline styles only, so it survives Jupyter Book's HTML), and as plain text.

Colour tells the kinds apart, but the page stays readable without it: rejected proposals
are struck through, discarded ones struck through in grey italics, corrections stand in
[square brackets], bonus tokens in {braces} and the prefill token in (parentheses).
It works for any drafter, since it reads only what the loop records.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable

from .metrics import GenerationResult

__all__ = ["KINDS", "Piece", "Round", "generation_rounds", "render_generation", "GenerationView"]


@dataclass(frozen=True)
class _Kind:
    label: str  # what the legend says
    style: str  # inline CSS of the token's box
    before: str = ""  # marks around the token, for reading without colour
    after: str = ""


_BOX = "color:#111;border:1px solid #bbb;border-radius:3px;padding:0 2px;margin:0 1px;"
KINDS: dict[str, _Kind] = {
    "prefill": _Kind("the first token, which the target samples after the prefill (in (parentheses))",
                     "background:#e4dcf3;", "(", ")"),
    "accepted": _Kind("drafted, accepted by the target", "background:#cdebd3;"),
    "rejected": _Kind("drafted, rejected by the target (struck through)",
                      "background:#f6c9cd;text-decoration:line-through;"),
    "discarded": _Kind("drafted, thrown away unjudged: after the rejection, or past a stop (struck "
                       "through, in grey italics)",
                       "background:#eeeeee;color:#666;font-style:italic;text-decoration:line-through;"),
    "correction": _Kind("the target's token at the rejection (in [brackets])",
                        "background:#ffe29a;text-decoration:underline;font-weight:bold;", "[", "]"),
    "bonus": _Kind("the target's token after all proposals were accepted, or when there were none "
                   "(in {braces})",
                   "background:#c9dcfb;text-decoration:underline;font-weight:bold;", "{", "}"),
}


@dataclass(frozen=True)
class Piece:
    """One token of the picture: its id and where it came from (a key of :data:`KINDS`)."""

    token: int
    kind: str

    @property
    def emitted(self) -> bool:
        """Whether the token is part of the output text."""
        return self.kind not in ("rejected", "discarded")


@dataclass(frozen=True)
class Round:
    """One speculative round: what the drafter proposed and what the target made of it."""

    index: int  # 1, 2, ... (the prefill token is not a round)
    drafted: int
    accepted: int
    pieces: tuple[Piece, ...]

    @property
    def emitted(self) -> list[int]:
        return [p.token for p in self.pieces if p.emitted]


def generation_rounds(result: GenerationResult) -> tuple[Piece | None, list[Round]]:
    """Split a speculative generation into ``(prefill piece, rounds)``.

    Round ``i`` proposed ``result.proposed_per_round[i]``; the first ``accepted`` proposals
    were kept, the next one was rejected and the rest were discarded, and the target added
    one token: a correction after a rejection, a bonus token otherwise (also when nothing was
    drafted). Tokens the loop cut off at a stop token or at ``max_new_tokens`` count as
    discarded. Raises ``ValueError`` for a result that carries no proposals (an autoregressive
    run, or one read from a file written before they were recorded) or whose records disagree.
    """
    n_rounds = len(result.accepted_per_round)
    if len(result.proposed_per_round) != n_rounds or len(result.drafted_per_round) != n_rounds:
        raise ValueError(
            f"the result records {len(result.proposed_per_round)} rounds of proposals, "
            f"{len(result.drafted_per_round)} of drafted and {n_rounds} of accepted counts; "
            "only a speculative_generate result that recorded its proposals can be drawn"
        )
    tokens = list(result.tokens)
    first = Piece(tokens[0], "prefill") if tokens else None
    pos, rounds = 1, []
    for i, (proposed, drafted, n) in enumerate(
        zip(result.proposed_per_round, result.drafted_per_round, result.accepted_per_round), 1
    ):
        proposed = [int(t) for t in proposed]
        if len(proposed) != drafted or not 0 <= n <= drafted:
            raise ValueError(f"round {i}: {len(proposed)} proposals, {drafted} drafted, {n} accepted")
        emitted = tokens[pos : pos + n + 1]  # shorter only where the loop stopped early
        m = min(n, len(emitted))
        if proposed[:m] != emitted[:m]:
            raise ValueError(f"round {i}: the accepted proposals are not the tokens emitted there")
        pieces = [Piece(t, "accepted" if j < len(emitted) else "discarded")
                  for j, t in enumerate(proposed[:n])]
        if n < drafted:
            pieces.append(Piece(proposed[n], "rejected"))
            pieces += [Piece(t, "discarded") for t in proposed[n + 1 :]]
        if len(emitted) == n + 1:  # the target's own token, drawn after the proposals
            pieces.append(Piece(emitted[n], "correction" if n < drafted else "bonus"))
        rounds.append(Round(i, drafted, n, tuple(pieces)))
        pos += len(emitted)
    if tokens and pos != len(tokens):
        hint = " (an autoregressive run has no rounds to draw)" if not rounds else ""
        raise ValueError(f"the rounds account for {pos} tokens, the result holds {len(tokens)}{hint}")
    return first, rounds


def _decoder(tokenizer) -> Callable[[int], str]:
    if tokenizer is None:
        return lambda t: f"<{t}>"
    if callable(getattr(tokenizer, "decode", None)):
        return lambda t: tokenizer.decode([t])
    if callable(tokenizer):
        return tokenizer
    raise TypeError("tokenizer must have a decode() method, be a callable id -> text, or be None")


def _visible(text: str, newlines: bool = False) -> str:
    """Whitespace a reader can see: newlines and tabs become arrows (a newline still breaks the
    line where ``newlines``), a token of whitespace only shows its spaces as ``␣``, and an empty
    string becomes ``∅``."""
    if text and not text.strip():
        text = text.replace(" ", "␣")
    arrow = "↵\n" if newlines else "↵"
    return text.replace("\r", "").replace("\n", arrow).replace("\t", "⇥") or "∅"


class GenerationView:
    """What :func:`render_generation` returns: HTML in a notebook, plain text elsewhere.

    ``.html`` is the HTML string, ``.text`` the colour-free rendering; a notebook shows the
    HTML (``_repr_html_``) and keeps the text as the plain-text version of the output.
    """

    def __init__(self, html_text: str, text: str):
        self.html = html_text
        self.text = text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def _span(text: str, kind: str, token: int | None, newlines: bool = False) -> str:
    """One token's box; ``token=None`` draws a legend key (class ``sd-key``, not ``sd-tok``)."""
    k = KINDS[kind]
    body = html.escape(k.before + _visible(text, newlines) + k.after)
    if kind == "rejected":  # the strike survives even where styles are dropped
        body = f"<s>{body}</s>"
    elif kind == "discarded":
        body = f"<del><i>{body}</i></del>"
    if token is None:
        return f'<span class="sd-key sd-{kind}" style="{_BOX}{k.style}">{body}</span>'
    return (f'<span class="sd-tok sd-{kind}" data-token="{token}" title="{html.escape(k.label)}: '
            f'token {token}" style="{_BOX}{k.style}">{body}</span>')


def _plain(text: str, kind: str) -> str:
    k = KINDS[kind]
    body = _visible(text).replace(" ", "␣")
    if kind == "rejected":
        body = f"~~{body}~~"
    elif kind == "discarded":
        body = f"~{body}~"
    return k.before + body + k.after


def render_generation(
    result: GenerationResult,
    tokenizer=None,
    prompt: str | None = None,
    title: str | None = None,
    max_rounds: int | None = None,
) -> GenerationView:
    """Draw a speculative generation round by round.

    One table row per round: how many tokens were drafted and accepted, then the round's
    tokens in text order -- accepted proposals, the target's token (correction or bonus),
    then the rejected and discarded proposals. Below the table, the output text with each
    token marked by its origin. ``tokenizer`` (anything with ``decode(list_of_ids)``, or a
    callable ``id -> str``) turns ids into text; without it, ids are shown. ``prompt`` is
    shown in grey before the output; ``max_rounds`` cuts a long table (the text stays whole).
    """
    decode = _decoder(tokenizer)
    first, rounds = generation_rounds(result)
    shown = rounds if max_rounds is None else rounds[:max_rounds]
    drafted = sum(r.drafted for r in rounds)
    accepted = sum(r.accepted for r in rounds)
    meta = result.meta or {}
    what = ", ".join(f"{k} = {meta[k]}" for k in ("drafter", "k") if k in meta)
    head = title or "Speculative generation"
    summary = (f"{len(rounds)} rounds{' (' + what + ')' if what else ''}: {accepted} of {drafted} "
               f"drafted tokens accepted, {result.n_new} tokens emitted")

    cell = "padding:2px 6px;border-bottom:1px solid #ddd;vertical-align:top;"
    out = [
        '<div class="specdec-generation" style="font-size:0.85em;line-height:1.9;margin:0.5em 0;">',
        f'<div class="sd-title" style="font-weight:bold;">{html.escape(head)}</div>',
        f'<div class="sd-summary">{html.escape(summary)}</div>',
        '<div class="sd-legend" style="margin:0.3em 0;">'
        + " ".join(f'<span style="white-space:nowrap;margin-right:0.8em;">{_span("tok", k, None)} '
                   f"{html.escape(v.label)}</span>" for k, v in KINDS.items())
        + "</div>",
        '<table class="sd-rounds" style="border-collapse:collapse;font-family:monospace;">',
        f'<tr><th style="{cell}">round</th><th style="{cell}">drafted</th>'
        f'<th style="{cell}">accepted</th><th style="{cell}text-align:left;">tokens</th></tr>',
    ]
    lines = [head, summary, "legend: " + "; ".join(f"{_plain('tok', k)} {v.label}" for k, v in KINDS.items())]
    if first is not None:
        box = _span(decode(first.token), "prefill", first.token)
        out.append(f'<tr class="sd-prefill-row"><td style="{cell}">prefill</td><td style="{cell}"></td>'
                   f'<td style="{cell}"></td><td style="{cell}">{box}</td></tr>')
        lines.append(f"prefill            {_plain(decode(first.token), 'prefill')}")
    for r in shown:
        toks = "".join(_span(decode(p.token), p.kind, p.token) for p in r.pieces)
        out.append(f'<tr class="sd-round" data-round="{r.index}"><td style="{cell}">{r.index}</td>'
                   f'<td style="{cell}">{r.drafted}</td><td style="{cell}">{r.accepted}</td>'
                   f'<td style="{cell}white-space:pre-wrap;">{toks}</td></tr>')
        lines.append(f"round {r.index:3d}  {r.accepted}/{r.drafted}  "
                     + " ".join(_plain(decode(p.token), p.kind) for p in r.pieces))
    if len(shown) < len(rounds):
        more = f"... {len(rounds) - len(shown)} more rounds not shown"
        out.append(f'<tr><td colspan="4" style="{cell}font-style:italic;">{more}</td></tr>')
        lines.append(more)
    out.append("</table>")

    text_pieces = ([first] if first is not None else []) + [p for r in rounds for p in r.pieces if p.emitted]
    body = "".join(_span(decode(p.token), p.kind, p.token, newlines=True) for p in text_pieces)
    context = (f'<span class="sd-prompt" style="color:#777;">{html.escape(prompt)}</span>' if prompt else "")
    out.append('<div class="sd-text-label" style="margin-top:0.4em;font-weight:bold;">'
               "The output text, each token marked by where it came from:</div>")
    out.append(f'<div class="sd-text" style="white-space:pre-wrap;font-family:monospace;">{context}{body}</div>')
    out.append("</div>")
    lines.append("text: " + (prompt or "") + "".join(_plain(decode(p.token), p.kind) for p in text_pieces))
    return GenerationView("\n".join(out), "\n".join(lines))
