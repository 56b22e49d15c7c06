"""Check the built website in a real browser: headless Chromium, driven over its DevTools protocol.

    python tools/browser_check.py build/site --screenshot build/site-index.png

Serves the site on 127.0.0.1 (a random free port), opens every page listed in ``pages.json``
and every internal page linked from them, and checks: the page loads with HTTP 200, it has its
title, every image has loaded with a non-zero natural width, and every internal link (including
``#fragment`` anchors) points at something that exists. Saves a screenshot of the index. Exits 1
and prints each problem when something is wrong. Chromium runs with a fresh profile and the flags
that keep it offline; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import websocket  # websocket-client, already installed with Jupyter

CHROMIUM = "/usr/bin/chromium"
OFFLINE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--remote-debugging-port=0"]
# Waits for every image to finish (load or error), then reports what the page holds.
PAGE_REPORT_JS = """(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return JSON.stringify({
    title: document.title,
    h1: (document.querySelector('article h1, h1') || {}).textContent || '',
    images: imgs.map(i => ({src: i.src.slice(0, 100), width: i.naturalWidth})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  });
})()"""


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page (commands in, events skipped)."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60)
        self.next_id = 0

    def call(self, method: str, wait_event: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        result: dict[str, Any] | None = None
        seen_event = wait_event is None
        while result is None or not seen_event:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result = message["result"]
            elif message.get("method") == wait_event:
                seen_event = True
        return result


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site`` on 127.0.0.1 at a free port, in a thread; return the server and base URL."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # one line per request would drown the report
            pass

    handler = functools.partial(QuietHandler, directory=str(site))
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # the browser closing a socket early
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def start_chromium(profile_dir: str) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium; return the process and the DevTools HTTP endpoint."""
    proc = subprocess.Popen([CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"DevTools listening on ws://([\d.]+:\d+)/", line)
        if match:
            return proc, f"http://{match[1]}"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("Chromium did not start (no 'DevTools listening' line)")


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def check_site(site: Path, screenshot: Path | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Open every page of ``site`` in Chromium; return (problems, per-page reports)."""
    manifest = json.loads((site / "pages.json").read_text())
    server, base = serve(site)
    problems: list[str] = []
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cvc-chromium-") as profile_dir:
        proc, endpoint = start_chromium(profile_dir)
        try:
            request = urllib.request.Request(f"{endpoint}/json/new?about:blank", method="PUT")
            with urllib.request.urlopen(request, timeout=30) as response:
                page = DevTools(json.loads(response.read())["webSocketDebuggerUrl"])
            page.call("Page.enable")
            expected = {urljoin(base, p["url"]): p["title"] for p in manifest}
            queue, seen, ids_of = list(expected), set(expected), {}
            links: list[tuple[str, str]] = []
            while queue:
                url = queue.pop(0)
                if status_of(url) != 200:
                    problems.append(f"{url}: HTTP {status_of(url)}")
                    continue
                page.call("Page.navigate", wait_event="Page.loadEventFired", url=url)
                value = page.call("Runtime.evaluate", expression=PAGE_REPORT_JS, awaitPromise=True,
                                  returnByValue=True)["result"]["value"]
                report = json.loads(value) | {"url": url}
                reports.append({k: report[k] for k in ("url", "title", "h1", "images")})
                ids_of[url] = set(report["ids"])
                want = expected.get(url)
                if not report["title"].strip() or (want and want not in report["title"] and url != base):
                    problems.append(f"{url}: title {report['title']!r}, expected it to contain {want!r}")
                if not report["h1"].strip():
                    problems.append(f"{url}: no h1 heading")
                problems += [f"{url}: image {img['src']!r} did not load (naturalWidth 0)"
                             for img in report["images"] if img["width"] <= 0]
                if url == base and screenshot is not None:
                    shot = page.call("Page.captureScreenshot", format="png")["data"]
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    screenshot.write_bytes(base64.b64decode(shot))
                for href in report["links"]:
                    if href.startswith(base):
                        links.append((url, href))
                        target = urldefrag(href)[0]
                        if target.endswith("/") and target not in seen:
                            seen.add(target)
                            queue.append(target)
            for source, href in links:
                target, fragment = urldefrag(href)
                if target in ids_of:
                    if fragment and fragment not in ids_of[target]:
                        problems.append(f"{source}: link {href} names a missing anchor #{fragment}")
                elif status_of(target) != 200:
                    problems.append(f"{source}: broken link {href}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            server.shutdown()
    return problems, reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="write the per-page report as JSON")
    args = parser.parse_args(argv)
    problems, reports = check_site(args.site, args.screenshot)
    for r in reports:
        widths = [img["width"] for img in r["images"]]
        print(f"{r['url']}  title={r['title']!r}  images={len(widths)} (min width {min(widths, default='-')})")
    if args.report:
        args.report.write_text(json.dumps({"problems": problems, "pages": reports}, indent=1))
    print("\n".join(problems) or f"browser check passed: {len(reports)} pages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
