"""The serving harness: the engine's counters read and turned into the book's figures, bad input
refused, and -- where the serving environment exists -- a real server started, answering greedy
requests as our loop does, and stopped with nothing left behind, also when it fails to start, when
Ctrl-C interrupts a load, and when the caller is killed outright."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from specdec import servebench, serving
from specdec.serving import Completion, ServeConfig, ServerError, VLLMServer, engine_figures, spec_metrics

METRICS = """# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 18.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e9
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 72.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 9.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 6.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 2.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 1.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="3"} 0.0
vllm:num_requests_running{engine="0",model_name="m"} 0.0
"""


def test_engine_counters_become_the_books_figures():
    m = spec_metrics(METRICS)
    assert m == {"drafts": 18, "draft_tokens": 72, "accepted_tokens": 9, "accepted_per_pos": [6, 2, 1, 0]}
    zero = spec_metrics("")
    f = engine_figures(zero, m)
    assert f["draft_acceptance_rate"] == pytest.approx(9 / 72)
    assert f["mean_acceptance_length"] == pytest.approx(1 + 9 / 18)  # the bonus token counted, as in tau
    assert f["survival_by_position"] == pytest.approx([6 / 18, 2 / 18, 1 / 18, 0])
    assert engine_figures(m, m)["mean_acceptance_length"] is None  # nothing drafted in between


def test_load_summary_and_the_batch_law():
    a = Completion([1, 2, 3, 4, 5], [0.5, 0.6, 0.8], [1, 2, 2])
    b = Completion([1, 2, 3], [1.0, 1.1, 1.2], [1, 1, 1])
    s = servebench.summarise_load([a, b], wall=2.0)
    assert s["throughput"] == 4.0 and s["requests"] == 2
    assert s["ttft_p50"] == pytest.approx(0.75)
    assert a.tpot == pytest.approx(0.3 / 4) and a.itl == pytest.approx([0.1, 0.2])
    assert s["tokens_per_chunk"] == pytest.approx((2 + 2 + 1 + 1) / 4)
    costs = {1: {"v": {1: 1.0, 5: 1.0}}, 16: {"v": {1: 1.0, 5: 4.0}}}
    pred = servebench.predict_batch_speedup(1.5, 1.0, costs, k=4)
    assert pred == {1: pytest.approx(1.5), 16: pytest.approx(1.5 / 4)}
    # rows that never draft pay nothing for the verify pass
    assert servebench.predict_batch_speedup(1.0, 0.0, costs, k=4)[16] == pytest.approx(1.0)
    # a drafter that costs c of a decode step per drafted token pays it in the rounds that draft
    assert servebench.predict_batch_speedup(1.5, 1.0, costs, k=4, c=0.1)[1] == pytest.approx(1.5 / 1.4)
    as_read = {"1": {"v": {"1": 1.0, "5": 1.0}}}  # a results file read back: its keys are strings
    assert servebench.predict_batch_speedup(1.5, 1.0, as_read, k=4)[1] == pytest.approx(1.5)
    assert servebench.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert servebench.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert servebench.first_difference([1, 2], [1, 2, 3]) == 2


def test_bad_input(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        ServeConfig(str(model))
    (model / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown method"):
        ServeConfig(str(model), method="medusa")
    with pytest.raises(ValueError, match="k must"):
        ServeConfig(str(model), method="ngram", k=0)
    with pytest.raises(ValueError, match="draft_dir"):
        ServeConfig(str(model), method="eagle3")
    with pytest.raises(ValueError, match="draft_dir"):
        ServeConfig(str(model), draft_dir=str(model))
    with pytest.raises(ValueError, match="no EAGLE-3 head"):
        ServeConfig(str(model), method="eagle3", draft_dir=str(tmp_path))
    with pytest.raises(ValueError, match="port"):
        VLLMServer(ServeConfig(str(model)), port=80)
    with pytest.raises(ValueError, match="concurrency"):
        servebench.run_load(VLLMServer(ServeConfig(str(model))), [[1]], 0, 4, 8)
    with pytest.raises(SystemExit) as exit_:
        servebench.main(["--concurrency", "0"])
    assert exit_.value.code == 2


def test_missing_environment_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(serving, "serve_venv", lambda: tmp_path / "nowhere")
    with pytest.raises(ServerError, match="make serve-env"):
        serving.serve_python()


def test_a_port_in_use_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert serving.port_in_use(port)
        server = VLLMServer(ServeConfig(str(tmp_path)), port=port)
        if serving.serve_venv().joinpath("bin", "python").exists():
            with pytest.raises(ServerError, match="in use"):
                server.start()
    assert server.proc is None


needs_vllm = pytest.mark.skipif(not serving.serve_venv().joinpath("bin", "python").exists(),
                                reason="the serving environment is not made (make serve-env)")


def gone(pid: int) -> bool:
    return not serving.group_members(pid)


@needs_vllm
def test_a_server_that_cannot_start_leaves_nothing_behind():
    from specdec.loaders import smollm2_dir

    bad = VLLMServer(ServeConfig(str(smollm2_dir()), extra_args=("--no-such-option",)))
    with pytest.raises(ServerError, match="exited"):
        bad.start()
    assert bad.proc is None
    slow = VLLMServer(ServeConfig(str(smollm2_dir())), start_timeout=2)
    with pytest.raises(ServerError, match="did not answer"):
        slow.start()
    assert slow.proc is None and not serving._RUNNING
    assert gone(slow.pid)


@needs_vllm
def test_served_greedy_answer_and_stop():
    from specdec.decoding import autoregressive_generate
    from specdec.loaders import load_smollm2, smollm2_dir
    from specdec.prompts import encode_prompt

    model, tok = load_smollm2()
    ids = encode_prompt(tok, "Write a Python function that adds two numbers.").tolist()
    ours = autoregressive_generate(model, torch.tensor(ids), 16).tokens
    with VLLMServer(ServeConfig(str(smollm2_dir()), method="ngram", name="m")) as server:
        pid = server.pid
        assert server.healthy()
        before = spec_metrics(server.metrics_text())
        done = server.complete(ids, 16, ignore_eos=True)
        after = spec_metrics(server.metrics_text())
    assert gone(pid) and not server.healthy()
    assert len(done.tokens) == 16 == sum(done.chunk_tokens)
    # float32 on both sides: the answers agree, or part where the target's two best tokens are close
    at = servebench.first_difference(done.tokens, ours)
    if at is not None:
        assert servebench.near_tie(model, ids, ours, at)["gap"] < 0.5
    assert after["drafts"] > before["drafts"]


LOAD_THEN_WAIT = """
from specdec import servebench
from specdec.loaders import smollm2_dir
from specdec.serving import ServeConfig, VLLMServer

if __name__ == "__main__":
    with VLLMServer(ServeConfig(str(smollm2_dir()))) as server:
        print("PGID", server.pid, flush=True)
        servebench.run_load(server, [[1, 2, 3]], concurrency=2, n_requests=500, max_tokens=64,
                            progress=False)
    print("the load ended without the interrupt", flush=True)
"""

SERVE_THEN_SLEEP = """
import time
from specdec.loaders import smollm2_dir
from specdec.serving import ServeConfig, VLLMServer

if __name__ == "__main__":
    server = VLLMServer(ServeConfig(str(smollm2_dir()))).start()
    print("PGID", server.pid, flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def caller_with_a_server(tmp_path, source: str):
    """Run ``source`` as a script that starts a server and prints its process group; yields
    ``(process, pgid)``, and afterwards kills whatever is left of either, whatever the test found."""
    script = tmp_path / "caller.py"
    script.write_text(source)
    # SIGINT as a terminal leaves it: a shell that starts jobs in the background (`cmd &`) passes
    # them an ignored SIGINT, and the caller would then never see the Ctrl-C the test sends
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pgid = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("PGID"), (line, proc.stderr.read() if proc.poll() is not None else "")
        pgid = int(line.split()[1])
        assert proc.poll() is None and not gone(pgid)
        yield proc, pgid
    finally:
        if proc.poll() is None:
            proc.kill()
        if pgid is not None and not gone(pgid):
            os.killpg(pgid, signal.SIGKILL)


@needs_vllm
def test_ctrl_c_during_a_load_stops_the_server(tmp_path):
    with caller_with_a_server(tmp_path, LOAD_THEN_WAIT) as (proc, pgid):
        time.sleep(3)  # the load is under way: 500 requests would take minutes
        proc.send_signal(signal.SIGINT)
        # generous: requests already sent finish first, and the stop waits up to 40 s; on a
        # busy machine all of that is slower (the test is about stopping, not its speed)
        out, err = proc.communicate(timeout=180)
        assert "KeyboardInterrupt" in err and "without the interrupt" not in out
        assert gone(pgid)


@needs_vllm
def test_a_caller_killed_outright_takes_its_server_with_it(tmp_path):
    with caller_with_a_server(tmp_path, SERVE_THEN_SLEEP) as (proc, pgid):
        proc.kill()  # SIGKILL: no atexit, no ``with``, no clean-up in the caller at all
        proc.wait(timeout=10)
        deadline = time.perf_counter() + 60
        while not gone(pgid) and time.perf_counter() < deadline:
            time.sleep(0.5)
        assert gone(pgid), serving.group_members(pgid)
