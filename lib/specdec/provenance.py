"""How a result was made, and whether the machine was quiet enough to make it.

* :func:`provenance` -- command, date, CPU, threads, library versions, the code's commit.
* :func:`load_average`, :func:`require_quiet`, :class:`BusyMachineError` -- a committed result
  is recorded only on a quiet machine (or marked forced).
* :class:`OthersCPU` -- cores kept busy by other processes while a block ran.
* :func:`write_report` -- a JSON report with its provenance.
* :func:`repo_root`, :func:`repo_relative` -- the repository's folders, and paths and commands
  written relative to it (a committed file carries no absolute path of the machine that made it).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path


__all__ = ["repo_root", "repo_relative", "cpu_name", "git_commit", "provenance", "load_average", "require_quiet",
           "BusyMachineError", "BUSY_LOAD_PER_CORE", "wait_for_quiet", "write_report", "OthersCPU",
           "is_committed_path"]


def repo_root() -> Path:
    """The repository this package runs from (``lib/specdec`` two levels below it)."""
    return Path(__file__).resolve().parents[2]


def repo_relative(path) -> str:
    """``path`` relative to the repository when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def _command(argv=None) -> str:
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith("__main__.py"):  # python -m package: name the module, not its file
        args[0] = "python -m " + Path(args[0]).parent.name
        return " ".join([args[0], *(shlex.quote(a) for a in args[1:])])
    return " ".join(shlex.quote(a) for a in args)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with ``+changes`` when the working
    tree differs from it), or None outside a git checkout."""
    import subprocess

    root = repo_root()
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "lib"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if dirty else "")


def provenance(command: str | None = None, device: str = "cpu") -> dict:
    """How a run was made: command, device, library versions and the code's commit, date, CPU,
    threads, profile."""
    import importlib.metadata as md

    import torch

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available() else None
    return {
        "kind": "provenance",
        "command": command if command is not None else _command(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": gpu or cpu_name(),
        "host_cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: version(p) for p in ("torch", "transformers", "bitsandbytes", "specdec", "numpy")},
        "commit": git_commit(),
        "profile": os.environ.get("SPECDEC_PROFILE", ""),
    }


def require_quiet(out, force: bool = False) -> list[float] | None:
    """The load average now; ``BusyMachineError`` if ``out`` is a committed results path, the
    machine is busy (above :data:`BUSY_LOAD_PER_CORE` per core) and ``force`` is not set."""
    load = load_average()
    if (out is not None and is_committed_path(Path(out)) and not force and load
            and load[0] > BUSY_LOAD_PER_CORE * (os.cpu_count() or 1)):
        raise BusyMachineError(f"load average {load[0]} is too high to record {out}; "
                               "wait for a quiet machine or pass --force")
    return load


def write_report(report: dict, out, command: str | None, load_before, force: bool = False) -> dict:
    """Add provenance (command, machine, versions, the load before and after, whether forced)
    to ``report`` and, when ``out`` is given, write it there as JSON. Returns ``report``."""
    report["provenance"] = {**provenance(command=command), "load_average_before": load_before,
                            "load_average_after": load_average(), "forced": bool(force)}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


class BusyMachineError(RuntimeError):
    """The machine is too busy to record a results file that others will read as a measurement."""


BUSY_LOAD_PER_CORE = 0.75  # a committed file is refused above this load average per core (1.5 on 2 cores)


def wait_for_quiet(max_load: float, timeout_s: float = 300.0, poll_s: float = 10.0) -> list[float] | None:
    """Wait (up to ``timeout_s``) until the 1-minute load average is at most ``max_load``, as
    it is a minute or so after a sweep of this process ends; returns the last load read. The
    caller's own check then refuses or records as usual."""
    deadline = time.monotonic() + timeout_s
    load = load_average()
    while load is not None and load[0] > max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = load_average()
    return load


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class OthersCPU:
    """Cores kept busy by *other* processes while a block ran: the machine's busy CPU time
    (``/proc/stat``) minus this process's own (``/proc/self/stat``), over the wall time. The
    load average cannot tell this: a benchmark's own two threads already make it 2."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            busy = sum(int(x) for i, x in enumerate(cpu[:8]) if i not in (3, 4))  # all but idle, iowait
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            return busy, int(own[11]) + int(own[12]), time.perf_counter()
        except (OSError, ValueError, IndexError):
            return None

    def cores(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return round(max(0.0, others / self.hz / (end[2] - self.start[2])), 3)


def is_committed_path(path: Path) -> bool:
    """Is ``path`` under a ``data/results`` folder, where the book's committed results live?
    (Recording there is refused on a busy machine unless forced.)"""
    parts = path.resolve().parts
    return any(parts[i:i + 2] == ("data", "results") for i in range(len(parts) - 1))
