"""The target's answers to the training prompts: batching changes nothing of the greedy text,
and the job that writes them in parts resumes where it stopped and loses nothing."""

import gzip
import json

import pytest
from transformers import PreTrainedTokenizerFast

from specdec import headanswers
from specdec.crossvocab import load_tokenizer
from specdec.decoding import autoregressive_generate
from specdec.prompts import encode_prompt

from .helpers import tiny_llama

TEXTS = ["def add(a, b):", "The quick brown fox jumps over", "Hello", "import os\nimport sys\nprint(os.sep)",
         "Summarise this.", "What is a list?", "x = 1", "for i in range(3):", "class A:", "print('hi')"]


@pytest.fixture(scope="module")
def setup():
    tok = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer("target-1000"))
    model = tiny_llama(n_layers=2, vocab=1000, seed=0)
    prompts = [dict(id=f"p{i}", domain=("code", "conversation")[i % 2], prompt=t) for i, t in enumerate(TEXTS)]
    return model, tok, prompts


@pytest.mark.parametrize("preallocated", [True, False])
def test_batched_answers_equal_answers_one_at_a_time(setup, preallocated):
    """Left padding, batching and the preallocated cache change nothing of the greedy text."""
    model, tok, prompts = setup
    prompts = prompts[:4]
    samples = headanswers.generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=3, progress=False,
                                           preallocated=preallocated)
    assert [s.id for s in samples] == [p["id"] for p in prompts]
    for s, p in zip(samples, prompts):
        ids = encode_prompt(tok, p["prompt"])
        assert s.prompt == ids.tolist()
        assert s.answer == autoregressive_generate(model, ids, 12).tokens
    assert headanswers.generate_answers(model, tok, prompts, 4, 2, progress=False, max_seconds=0.0) == []


def test_parts_accumulate_and_resume(setup, tmp_path):
    model, tok, prompts = setup
    one = headanswers.answer_in_parts(model, tok, prompts, tmp_path, batch_size=2, max_new_tokens=6,
                                      part_batches=2, target_tokens=10, progress=False)
    assert one["parts"] == ["part-0000.jsonl.gz"] and one["tokens"] >= 10  # stopped at the token target
    first, _ = headanswers.load_answers(tmp_path)
    assert len(first) == 4 and one["prompts_left"] == len(prompts) - 4
    two = headanswers.answer_in_parts(model, tok, prompts, tmp_path, batch_size=2, max_new_tokens=6,
                                      part_batches=2, progress=False)
    assert two["parts"] == ["part-0001.jsonl.gz", "part-0002.jsonl.gz"]  # parts of two batches: 4 + 2 prompts
    samples, meta = headanswers.load_answers(tmp_path)
    assert sorted(s.id for s in samples) == sorted(p["id"] for p in prompts)  # every prompt once
    assert samples[:4] == first and meta["n_parts"] == 3 and meta["max_new_tokens"] == 6
    assert two["prompts_left"] == 0 and two["total_prompts"] == len(prompts)
    # each answer is the target's own greedy answer
    for s in samples:
        p = next(p for p in prompts if p["id"] == s.id)
        assert s.answer == autoregressive_generate(model, encode_prompt(tok, p["prompt"]), 6).tokens
    # nothing left: a third run writes nothing
    three = headanswers.answer_in_parts(model, tok, prompts, tmp_path, batch_size=2, max_new_tokens=6,
                                        progress=False)
    assert three["parts"] == [] and three["prompts"] == 0
    # other settings in the same folder are refused, and nothing is written
    with pytest.raises(ValueError, match="other folder"):
        headanswers.answer_in_parts(model, tok, prompts + [dict(id="new", domain="code", prompt="new")], tmp_path,
                                    batch_size=2, max_new_tokens=7, progress=False)
    assert len(list(tmp_path.glob("part-*"))) == 3


def test_an_interrupted_run_keeps_its_finished_batches(setup, tmp_path, monkeypatch):
    model, tok, prompts = setup
    calls = []
    real = model.generate

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C or SIGTERM in the third batch
        return real(*a, **k)

    monkeypatch.setattr(model, "generate", flaky)
    out = headanswers.answer_in_parts(model, tok, prompts, tmp_path, batch_size=2, max_new_tokens=5,
                                      part_batches=8, progress=False)
    monkeypatch.undo()
    assert out["interrupted"] and out["prompts"] == 4  # two batches finished, both written
    assert len(headanswers.load_answers(tmp_path)[0]) == 4


def test_batch_size_measurement_keeps_its_answers(setup):
    model, tok, prompts = setup
    table, samples = headanswers.measure_batch_sizes(model, tok, prompts, sizes=(1, 2), prompts_per_size=4,
                                                     rounds=2, max_new_tokens=4, progress=False)
    assert set(table) == {1, 2} and all(len(r["rounds"]) == 2 for r in table.values())
    assert all(r["median_tokens_per_s"] > 0 for r in table.values())
    assert len(samples) == 8 and len({s.id for s in samples}) == 8


def test_a_single_file_and_an_empty_folder(tmp_path, setup):
    _, _, prompts = setup
    with pytest.raises(FileNotFoundError, match="make answers"):
        headanswers.load_answers(tmp_path)
    path = headanswers.save_answers([], tmp_path / "one.jsonl.gz", meta=dict(max_new_tokens=3))
    assert headanswers.load_answers(path) == ([], dict(max_new_tokens=3))
    with gzip.open(path, "rt") as f:
        assert json.loads(f.readline()) == {"meta": dict(max_new_tokens=3)}
    assert not list(tmp_path.glob("*.partial"))


def test_the_committed_answers_are_consistent():
    samples, meta = headanswers.load_answers()
    assert meta["temperature"] == 0.0 and meta["max_new_tokens"] == 256
    assert len({s.id for s in samples}) == len(samples)  # no prompt answered twice


def test_answers_made_while_measuring_form_a_part_of_their_own(setup, tmp_path):
    model, tok, prompts = setup
    table, made = headanswers.measure_batch_sizes(model, tok, prompts[:4], sizes=(2,), prompts_per_size=4, rounds=2,
                                                  max_new_tokens=4, progress=False)
    out = headanswers.answer_in_parts(model, tok, prompts, tmp_path, batch_size=2, max_new_tokens=4, part_batches=8,
                                      progress=False, first_samples=made, first_seconds=1.5)
    first, rest = headanswers.answer_parts(tmp_path)
    assert out["parts"] == ["part-0000.jsonl.gz", "part-0001.jsonl.gz"]
    assert first[2]["batch_size"] is None and first[2]["seconds"] == 1.5 and len(first[1]) == 4
    assert rest[2]["batch_size"] == 2 and {s.id for s in rest[1]} == {p["id"] for p in prompts[4:]}
