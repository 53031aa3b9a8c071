"""Headless Chromium for the browser check of the built book, with no dependency but
``websocket-client``.

The built HTML (``_build/html``) is served by a local ``http.server`` on 127.0.0.1 and loaded in
Debian's headless Chromium, driven over the Chrome DevTools Protocol with ``websocket-client``.
Chromium resolves no host name except 127.0.0.1, so a page never reaches the network, and a
resource that the book itself fails to provide shows up as a failed local request.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path

import websocket

REPO = Path(__file__).resolve().parents[2]
HTML_DIR = Path(os.environ.get("SPECDEC_HTML_DIR", REPO / "_build" / "html"))
SCREENSHOT_DIR = Path(os.environ.get("SPECDEC_SCREENSHOT_DIR", REPO / "screenshots"))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,900",
    # Every host name but the local server's address fails at once: nothing leaves the machine,
    # and a script from a CDN (MathJax) cannot hold up the page's load event.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-port=0",
    "about:blank",
)
TIMEOUT_S = 30.0
MAX_SCREENSHOT_HEIGHT = 12_000  # px; longer pages are cut off at the bottom of the picture


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 (a free port); yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser-level websocket."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT_S, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict] = []

    def _receive(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from Chromium in time")
        self.ws.settimeout(remaining)
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise TimeoutError("no answer from Chromium in time") from None

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT_S) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            data = self._receive(deadline)
            if data.get("id") == self._next_id:
                if "error" in data:
                    raise RuntimeError(f"DevTools {method} failed: {data['error']}")
                return data.get("result", {})
            if "method" in data:
                self.events.append(data)

    def wait_for(self, method: str, session: str, timeout: float = TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            data = self._receive(deadline)
            if "method" in data:
                self.events.append(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


class Tab:
    """One page of the browser: load a URL, evaluate a script in it, take its screenshot."""

    def __init__(self, devtools: DevTools):
        self.devtools = devtools
        target = devtools.call("Target.createTarget", {"url": "about:blank"})
        attached = devtools.call("Target.attachToTarget",
                                 {"targetId": target["targetId"], "flatten": True})
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        # No cached copies: every page is loaded from the build as it is on disk now.
        self.call("Network.setCacheDisabled", {"cacheDisabled": True})

    def call(self, method: str, params: dict | None = None, timeout: float = TIMEOUT_S) -> dict:
        return self.devtools.call(method, params, session=self.session, timeout=timeout)

    def load(self, url: str) -> dict:
        """Load ``url`` and wait for its load event; returns what went wrong while loading it."""
        self._settle()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise AssertionError(f"{url}: navigation failed: {result['errorText']}")
        self.devtools.wait_for("Page.loadEventFired", self.session)
        return self._load_report(result.get("loaderId"))

    def _settle(self) -> None:
        """Leave the previous page for about:blank and drop its events, so that nothing it did
        late is counted against the next page."""
        self.call("Page.navigate", {"url": "about:blank"})
        self.devtools.wait_for("Page.loadEventFired", self.session)
        self.call("Runtime.evaluate", {"expression": "0"})  # every earlier event has arrived
        self.devtools.events.clear()

    def _load_report(self, loader_id: str | None) -> dict:
        urls, failed, exceptions = {}, [], []
        for event in self.devtools.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                if loader_id is None or params.get("loaderId") == loader_id:
                    urls[params["requestId"]] = params["request"]["url"]
            elif method == "Network.responseReceived" and params["requestId"] in urls:
                response = params["response"]
                if response.get("status", 0) >= 400:
                    failed.append(f"{response['url']} -> HTTP {response['status']}")
            elif (method == "Network.loadingFailed" and params["requestId"] in urls
                  and not params.get("canceled")):
                failed.append(f"{urls[params['requestId']]} -> {params.get('errorText')}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                exceptions.append(f"{details.get('url', '?')}: {text}")
        return {"failed_requests": failed, "exceptions": exceptions}

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "scale": 1,
                "width": max(1, int(size["width"])),
                "height": max(1, min(int(size["height"]), MAX_SCREENSHOT_HEIGHT))}
        shot = self.call("Page.captureScreenshot",
                         {"format": "png", "clip": clip, "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
