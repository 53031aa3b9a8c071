"""Command lines refuse bad input with one line and exit status 2, before any work (specdec.cli).

No test here loads a model: the loader is replaced by one that fails the test if it is called,
or the command runs in a fresh interpreter that must exit before it has imported torch.
"""

import argparse
import re
import subprocess
import sys

import pytest
import torch

from specdec import cli


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """The loader of the packaged models (``python -m specdec``'s), replaced by one that fails the test when called."""
    import specdec.packaged

    def refuse(*args, **kwargs):
        raise ModelLoaded("the command loaded a model before refusing its arguments")

    monkeypatch.setattr(specdec.packaged, "load", refuse)


def run_main(argv, capsys):
    from specdec.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


BAD = [
    (["-k", "0"], "-k", "an integer >= 1"),
    (["-k", "-1"], "-k", "an integer >= 1"),
    (["-k", "four"], "-k", "an integer >= 1"),
    (["-k", "2.5"], "-k", "an integer >= 1"),
    (["--max-new-tokens", "-3"], "--max-new-tokens", "an integer >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens", "an integer >= 1"),
    (["--drafter", "medusa"], "--drafter", "ngram, nf4, early, eagle"),
    (["--prompt", ""], "--prompt", "non-empty"),
    (["--prompt", "  \t "], "--prompt", "non-empty"),
    (["--threads", "0"], "--threads", "an integer >= 1"),
    (["-k"], "-k", "--help"),
    (["--bogus", "1"], "--bogus", "--help"),
]


@pytest.mark.parametrize("argv, argument, allowed", BAD, ids=[" ".join(a) or "empty" for a, _, _ in BAD])
def test_python_m_specdec_refuses_bad_input_in_one_line(argv, argument, allowed, no_model, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("python -m specdec: error: ")
    assert argument in line and allowed in line, line
    assert "; " in line  # what is wrong; what is allowed
    assert "Traceback" not in err and "usage:" not in err


def test_valid_input_reaches_the_loader(no_model):
    """The other half of the tests above: good arguments do get as far as loading the model, so
    the loader the tests replace is the one the command calls."""
    from specdec.__main__ import main

    with pytest.raises(ModelLoaded):
        main(["-k", "2", "--max-new-tokens", "5", "--drafter", "early", "--prompt", "Hi"])


def test_python_m_specdec_exits_before_importing_torch():
    """In a fresh interpreter, a refused argument ends the command before torch (let alone a
    model) is imported."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['specdec', '-k', '0']\n"
        "try:\n"
        "    runpy.run_module('specdec', run_name='__main__')\n"
        "finally:\n"
        "    print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "torch imported: False"
    assert proc.stderr.strip().splitlines() == [
        "python -m specdec: error: argument -k: got 0; allowed: an integer >= 1"
    ]


def test_python_m_specdec_entry_point_refuses_bad_input():
    proc = subprocess.run([sys.executable, "-m", "specdec", "--max-new-tokens", "-3"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "python -m specdec: error: argument --max-new-tokens: got -3; allowed: an integer >= 1"
    ]


def test_defaults_parse():
    from specdec.__main__ import DEFAULT_DRAFTER, DEFAULT_PROMPT, build_parser

    args = build_parser().parse_args([])
    assert (args.k, args.max_new_tokens, args.drafter, args.prompt, args.threads) == (
        4, 64, DEFAULT_DRAFTER, DEFAULT_PROMPT, None)
    args = build_parser().parse_args(["-k", " 8 ", "--drafter", "nf4", "--prompt", " hello "])
    assert (args.k, args.drafter, args.prompt) == (8, "nf4", " hello ")


# --------------------------------------------------------------------------------------------
# The report of python -m specdec uses the book's speedup definition
# --------------------------------------------------------------------------------------------


class _Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_python_m_specdec_reports_both_speedups_from_metrics_speedup(monkeypatch, capsys, tiny_target):
    import specdec.packaged
    import specdec.metrics
    import specdec.prompts

    monkeypatch.setattr(specdec.packaged, "load", lambda *a, **k: (tiny_target, _Tokenizer()))
    monkeypatch.setattr(specdec.prompts, "encode_prompt", lambda tok, text, chat=True: torch.tensor([5, 6, 7, 5, 6]))
    monkeypatch.setattr(specdec.prompts, "stop_token_ids", lambda tok, model=None: set())
    calls = []
    real = specdec.metrics.speedup

    def recording(result, baseline, end_to_end=False):
        value = real(result, baseline, end_to_end=end_to_end)
        calls.append((end_to_end, value))
        return value

    monkeypatch.setattr(specdec.metrics, "speedup", recording)
    from specdec.__main__ import main

    assert main(["-k", "3", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert sorted(e for e, _ in calls) == [False, True]
    values = dict(calls)
    line = next(s for s in out.splitlines() if s.startswith("speedup:"))
    m = re.fullmatch(r"speedup: ([0-9.]+)x decode-only \(after the first token\), ([0-9.]+)x end to end "
                     r"\(first token included\).*", line)
    assert m, line
    assert m.group(1) == f"{values[False]:.2f}" and m.group(2) == f"{values[True]:.2f}"
    assert "matches plain greedy decoding token for token: yes" in out


def test_one_generated_token_has_no_decode_speedup(monkeypatch, capsys, tiny_target):
    import specdec.packaged
    import specdec.prompts

    monkeypatch.setattr(specdec.packaged, "load", lambda *a, **k: (tiny_target, _Tokenizer()))
    monkeypatch.setattr(specdec.prompts, "encode_prompt", lambda tok, text, chat=True: torch.tensor([5, 6, 7]))
    monkeypatch.setattr(specdec.prompts, "stop_token_ids", lambda tok, model=None: set())
    from specdec.__main__ import main

    assert main(["--max-new-tokens", "1"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("speedup:"))
    assert line.startswith("speedup: n/a decode-only") and "at least two generated tokens" in line


# --------------------------------------------------------------------------------------------
# The type functions
# --------------------------------------------------------------------------------------------


def refused(parse, text) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        parse(text)
    msg = str(exc.value)
    assert "; " in msg and "\n" not in msg, msg
    return msg


def test_integers():
    assert cli.positive_int("3") == 3 and cli.nonneg_int("0") == 0 and cli.int_range(2, 5)("5") == 5
    assert "an integer >= 1" in refused(cli.positive_int, "0")
    assert "an integer >= 0" in refused(cli.nonneg_int, "-1")
    assert "from 2 to 5" in refused(cli.int_range(2, 5), "6")
    assert "not an integer" in refused(cli.positive_int, "1e3")
    assert "not an integer" in refused(cli.positive_int, "")


def test_floats():
    assert cli.float_range(0, 1)("1") == 1.0 and cli.nonneg_float("0") == 0.0
    top_p = cli.float_range(0.0, 1.0, min_open=True)
    assert top_p("0.9") == 0.9
    assert "> 0 and <= 1" in refused(top_p, "0")
    assert "> 0 and <= 1" in refused(top_p, "1.5")
    assert "> 0" in refused(cli.positive_float, "0")
    for text in ("nan", "inf", "-inf", "x"):
        refused(cli.float_range(), text)


def test_strings_and_choices():
    assert cli.nonempty_str(" a ") == " a "
    assert "non-empty" in refused(cli.nonempty_str, "")
    assert "non-empty" in refused(cli.nonempty_str, " \n ")
    drafter = cli.choice(["ngram", "nf4"], what="drafter")
    assert drafter("nf4") == "nf4"
    assert refused(drafter, "eagle") == "unknown drafter 'eagle'; allowed: one of ngram, nf4"


def test_int_list():
    ks = cli.int_list(minimum=1)
    assert ks("1,2,4,8") == (1, 2, 4, 8) and ks(" 1, 2 ") == (1, 2) and ks("3") == (3,)
    assert refused(ks, "0").startswith("got 0;")
    assert "got 0 in '1,0'" in refused(ks, "1,0")
    assert "integers >= 1, e.g. 1,2,4,8" in refused(ks, "1,0")
    assert "empty list" in refused(ks, "")
    assert "empty list" in refused(ks, ",")
    assert "empty item" in refused(ks, "1,,2")
    assert "not an integer" in refused(ks, "1,two")
    assert "twice" in refused(ks, "1,2,1")
    assert cli.int_list(minimum=1, unique=False)("1,1") == (1, 1)
    assert "from 1 to 8" in refused(cli.int_list(1, 8), "16")


def test_float_list():
    temps = cli.float_list(minimum=0.0)
    assert temps("0,0.7,1") == (0.0, 0.7, 1.0)
    assert "numbers >= 0" in refused(temps, "-1")
    assert "finite" in refused(temps, "0,nan")
    assert "twice" in refused(temps, "1,1.0")


def test_name_list_with_choices():
    domains = cli.name_list(["code", "conversation"], what="domain")
    assert domains("code, conversation") == ("code", "conversation")
    msg = refused(domains, "code,poetry")
    assert "unknown domain 'poetry'" in msg and "code, conversation" in msg
    assert "twice" in refused(domains, "code,code")
    assert "empty list" in refused(domains, "")


def test_name_list_with_a_validator():
    """A validator takes what no fixed list can hold, e.g. synthetic pair names."""

    def check_pair(name):
        if name.startswith("synthetic-eps"):
            float(name.removeprefix("synthetic-eps"))  # ValueError for a bad knob
            return
        if name not in ("gpt2_dev", "smollm2_ngram"):
            raise ValueError(f"unknown pair {name!r}; known pairs: gpt2_dev, smollm2_ngram")

    pairs = cli.name_list(validate=check_pair, what="pair")
    assert pairs("gpt2_dev,synthetic-eps0.2") == ("gpt2_dev", "synthetic-eps0.2")
    msg = refused(pairs, "gpt2_dev,nope")
    assert msg.startswith("unknown pair 'nope' in 'gpt2_dev,nope'; known pairs: gpt2_dev")
    refused(pairs, "synthetic-epsx")  # the float() error, given a "; see --help" tail
    # a predicate that returns False refuses too
    even = cli.name_list(validate=lambda s: s.isdigit() and int(s) % 2 == 0, what="even number")
    assert even("2,4") == ("2", "4")
    assert "unknown even number '3'" in refused(even, "3")
    assert cli.checked(lambda s: s != "x", what="name")("y") == "y"
    refused(cli.checked(lambda s: s != "x", what="name"), "x")
    with pytest.raises(ValueError):
        cli.name_list()


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def parse_error(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "usage:" not in err, err
    return err.strip()


def test_parser_errors_are_one_line_also_for_subcommands(capsys):
    ap = cli.ArgumentParser(prog="tool")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--ks", type=cli.int_list(minimum=1))
    run.add_argument("--n-prompts", type=cli.positive_int)
    run.add_argument("--device", choices=["cpu", "cuda"])
    run.add_argument("--out", required=True)
    assert ap.parse_args(["run", "--out", "x", "--ks", "1,2"]).ks == (1, 2)
    assert parse_error(ap, ["run", "--out", "x", "--ks", "0"], capsys).startswith(
        "tool run: error: argument --ks: got 0; allowed: comma-separated integers >= 1")
    assert "argument --n-prompts: got 0" in parse_error(ap, ["run", "--out", "x", "--n-prompts", "0"], capsys)
    assert parse_error(ap, ["run", "--out", "x", "--device", "tpu"], capsys) == (
        "tool run: error: argument --device: invalid choice 'tpu'; choose from cpu, cuda")
    assert parse_error(ap, ["run"], capsys) == (
        "tool run: error: the following arguments are required: --out; see 'tool run --help'")
    assert parse_error(ap, ["walk"], capsys).startswith(
        "tool: error: argument command: invalid choice 'walk'; choose from")
    assert parse_error(ap, [], capsys).startswith("tool: error: the following arguments are required: command; ")


def test_argument_error_after_parsing(capsys):
    ap = cli.ArgumentParser(prog="tool")
    with pytest.raises(SystemExit) as exc:
        ap.argument_error("--top-k", "top-k 5 with temperature 0", "top-k needs a temperature > 0")
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "tool: error: argument --top-k: top-k 5 with temperature 0; top-k needs a temperature > 0\n")


def test_one_integer_check_for_the_library():
    from specdec.checks import require_int

    assert require_int("k", 3, 1) == 3 and require_int("seed", 0, 0) == 0
    for bad in (0, -2, 2.5, True, "3", None):
        with pytest.raises(ValueError, match=r"^k must be an integer >= 1, got "):
            require_int("k", bad, 1)
    with pytest.raises(ValueError, match="from 1 to 4"):
        require_int("n_layers", 5, 1, 4)
    # the command lines phrase the same bounds the same way
    assert "an integer from 1 to 4" in refused(cli.int_range(1, 4), "5")
