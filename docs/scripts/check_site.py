"""Open every page of the built site in headless Chromium: no console errors, a title, navigation.

    mkdocs build --strict && python docs/scripts/check_site.py site/

The site is served on 127.0.0.1 (a free port, this process only) as a web host would serve
it: the search worker does not run from ``file://``. Chromium is driven through the
DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages ending in a NUL
byte on file descriptors 3 and 4), so nothing beyond the standard library and Debian's
``chromium`` is needed. For each page: JavaScript exceptions, ``console.error`` calls and
the browser's own error log (failed resource loads: a missing picture, a blocked
script) are errors; the page must have a ``<title>``, one ``<h1>`` and the site's
navigation with a link to every top-level section. Exit status 1 lists what failed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Flags of a Chromium that makes no request of its own to the outside (this machine has
# no network: without them it keeps trying Google's hosts) and runs as root in a container.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
PAGE_STATE = """JSON.stringify({
  title: document.title,
  h1: Array.from(document.querySelectorAll('article h1')).map(h => h.textContent.trim()),
  navLinks: Array.from(document.querySelectorAll('nav.md-nav--primary .md-nav__link'))
      .map(a => a.textContent.trim()),
  images: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
      .map(i => i.getAttribute('src')),
})"""


@dataclass
class PageReport:
    """What one page showed: its title, headings, navigation and errors."""

    path: str
    title: str = ""
    h1: list[str] = field(default_factory=list)
    nav_links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class DevTools:
    """A Chromium started with ``--remote-debugging-pipe``, driven by DevTools messages."""

    def __init__(self, chromium: str, profile: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"]
        self.pid = os.posix_spawn(
            chromium,
            [*args, "about:blank"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, to_browser_r, 3),  # the browser reads commands on fd 3
                (os.POSIX_SPAWN_DUP2, from_browser_w, 4),  # and writes answers on fd 4
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, dict] = {}
        self.events: queue.Queue[dict] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._answers[message["id"]] = message
                        self._cond.notify_all()
                else:
                    self.events.put(message)

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params: Any):
        """Send one command and wait for its answer; a protocol error raises RuntimeError."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._next_id in self._answers, timeout):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            answer = self._answers.pop(self._next_id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            os.kill(self.pid, 15)
        os.waitpid(self.pid, 0)
        os.close(self._to_browser)


def _event_error(event: dict) -> str | None:
    """The error an event reports, or None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        text = details.get("exception", {}).get("description") or details.get("text")
        return f"exception: {text}"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
        return f"console.{params['type']}: {' '.join(texts)}"
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def site_pages(site: Path) -> list[str]:
    """Every page of a built mkdocs site, as URL paths (``api/layers/``...), 404 page aside."""
    pages = []
    for html in sorted(site.rglob("index.html")):
        relative = html.parent.relative_to(site).as_posix()
        pages.append("" if relative == "." else relative + "/")
    return pages


def check_site(
    site: Path, chromium: str = "chromium", settle_seconds: float = 0.3
) -> list[PageReport]:
    """Load every page of ``site`` in headless Chromium and report what each showed."""
    executable = shutil.which(chromium)
    if executable is None:
        raise FileNotFoundError(f"no {chromium!r} on PATH (Debian: apt-get install chromium)")
    handler = functools.partial(_Quiet, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    reports = []
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(executable, profile)
        try:
            target = browser.send("Target.createTarget", url="about:blank")["targetId"]
            session = browser.send("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                browser.send(f"{domain}.enable", session)
            for path in site_pages(site):
                while not browser.events.empty():  # events of the page before
                    browser.events.get()
                report = PageReport(path)
                browser.send("Page.navigate", session, url=base + path)
                loaded = False
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        event = browser.events.get(timeout=0.1)
                    except queue.Empty:
                        if loaded:
                            break
                        continue
                    if event.get("method") == "Page.loadEventFired":
                        loaded = True
                        deadline = time.monotonic() + settle_seconds  # late errors (workers)
                    elif (error := _event_error(event)) is not None:
                        report.errors.append(error)
                if not loaded:
                    report.errors.append("the page did not finish loading within 30 s")
                state = json.loads(
                    browser.send("Runtime.evaluate", session, expression=PAGE_STATE)["result"][
                        "value"
                    ]
                )
                report.title, report.h1, report.nav_links = (
                    state["title"],
                    state["h1"],
                    state["navLinks"],
                )
                report.errors += [f"picture not shown: {src}" for src in state["images"]]
                reports.append(report)
        finally:
            browser.close()
            server.shutdown()
    return reports


def problems(reports: list[PageReport], sections: list[str]) -> list[str]:
    """What is wrong with the pages: errors, no title or heading, navigation without a section."""
    found = []
    for r in reports:
        where = r.path or "(home)"
        found += [f"{where}: {e}" for e in r.errors]
        if not r.title.strip():
            found.append(f"{where}: no <title>")
        if len(r.h1) != 1:
            found.append(f"{where}: {len(r.h1)} <h1> headings, expected one")
        missing = [s for s in sections if s not in r.nav_links]
        if missing:
            found.append(f"{where}: navigation lacks {missing}")
    return found


def nav_sections(mkdocs_yml: Path) -> list[str]:
    """The top-level navigation titles of mkdocs.yml (read without its custom YAML tags)."""
    titles, in_nav = [], False
    for line in mkdocs_yml.read_text().splitlines():
        if line.startswith("nav:"):
            in_nav = True
        elif in_nav and line.startswith("  - "):
            titles.append(line[4:].split(":", 1)[0].strip())
        elif in_nav and line and not line.startswith(" "):
            break
    return titles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build's site_dir)")
    parser.add_argument("--chromium", default="chromium", help="the browser's executable")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    reports = check_site(args.site, args.chromium)
    sections = nav_sections(Path(__file__).resolve().parents[2] / "mkdocs.yml")
    found = problems(reports, sections)
    for r in reports:
        print(f"{r.path or '(home)':40s} {r.title!r}: {len(r.nav_links)} nav links, "
              f"{len(r.errors)} errors")  # fmt: skip
    print(f"{len(reports)} pages in {time.perf_counter() - start:.1f} s")
    for line in found:
        print("FAIL", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
