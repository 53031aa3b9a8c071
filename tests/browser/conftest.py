"""Fixtures for the browser check: a headless Chromium and the built book served on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .chromium_cdp import (CHROMIUM_FLAGS, CHROMIUM_NAMES, HTML_DIR, TIMEOUT_S, DevTools, Tab,
                          find_chromium, in_ci, serve)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = ("Chromium not found (looked for $CHROMIUM, then " + ", ".join(CHROMIUM_NAMES)
                   + "); on Debian: apt-get install -y chromium")
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def browser(chromium):
    """A headless Chromium with a new, empty profile, for the whole test session."""
    profile = Path(tempfile.mkdtemp(prefix="specdec-chromium-"))
    log = open(profile.parent / f"{profile.name}.log", "w+b")
    process = subprocess.Popen([chromium, f"--user-data-dir={profile}", *CHROMIUM_FLAGS],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + TIMEOUT_S
    lines: list[str] = []
    while time.monotonic() < deadline and process.poll() is None:
        if port_file.exists():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                break
        time.sleep(0.05)
    if len(lines) < 2:
        process.kill()
        process.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")[-3000:]
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"Chromium ({chromium}) did not start its DevTools server:\n{output}")
    devtools = DevTools(f"ws://127.0.0.1:{lines[0]}{lines[1]}")
    try:
        yield devtools
    finally:
        with contextlib.suppress(Exception):
            devtools.call("Browser.close", timeout=5)
        devtools.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def tab(browser) -> Tab:
    return Tab(browser)


@pytest.fixture(scope="session")
def html_dir() -> Path:
    if not (HTML_DIR / "index.html").is_file():
        pytest.skip(f"no built book at {HTML_DIR}: run `make book` (or jupyter-book build .) first")
    return HTML_DIR


@pytest.fixture(scope="session")
def book_url(html_dir):
    with serve(html_dir) as url:
        yield url
