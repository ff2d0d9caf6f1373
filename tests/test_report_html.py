"""``lk-probe show … --html FILE`` rendered by a real headless Chromium (driven over the DevTools protocol on a pipe:
no port): what a user sees — the phases in order on one timeline, the finding's headline, an attribute behind a
click, the screenshot's bars — and a ``<script>`` in a span attribute shown as text, never run. Without a Chromium
here the browser test skips (CI's .ci/run installs Debian's chromium-headless-shell)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import struct
import subprocess
import zlib
from html import escape
from pathlib import Path
from typing import Any

import pytest
from test_serve import report_000  # noqa: F401  (the fixture)

from lk_probe import otlpjson
from lk_probe.__main__ import main
from lk_probe.spans import SpanRecord

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")
EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def _b64(part: bytes) -> str:
    return base64.urlsafe_b64encode(part).decode().rstrip("=")


# a token-shaped string made here, never committed as one: header.payload.signature
TOKEN = ".".join(_b64(p) for p in (b'{"alg":"HS256"}', b'{"sub":"agent"}', b"signature"))
# the replay's phases in tree order (the worker's job root first)
PHASES = ["job", "rtc.attempt", "rtc.signal", "rtc.validate", "rtc.region_fetch", "rtc.attempt", "rtc.signal",
          "rtc.join", "rtc.pc"]


@pytest.fixture
def report(report_000, tmp_path, capsys):  # noqa: F811
    """Report 000's job as OTLP JSON, a room name carrying markup and a URL carrying a token, written by
    ``lk-probe show --html``."""
    job, spans, root = report_000
    records = [SpanRecord.from_readable(s) for s in [*spans, root]]
    records[-1].attributes["lk.pii.room_name"] = EVIL
    records[1].attributes["server.address"] = f"lkp-test.livekit.cloud/rtc?access_token={TOKEN}"
    (tmp_path / "spans.json").write_text(otlpjson.dumps(records))
    out = tmp_path / "report.html"
    assert main(["show", str(tmp_path / "spans.json"), "--html", str(out)]) == 0
    assert capsys.readouterr().err == f"lk-probe: wrote {out}\n"
    return job, out


def test_the_file_is_self_contained_escaped_and_redacted(report):
    _, path = report
    page = path.read_text()
    assert escape(EVIL) in page  # as text
    rest = page.replace(escape(EVIL), "")
    assert not any(x in rest for x in ("<script", "<img", "onerror", "src=", "href=", "url(", "@import", "http://",
                                       "https://"))
    assert "default-src 'none'" in page  # a CSP as a second line of defence
    assert TOKEN not in page and "lkp-test.livekit.cloud/rtc" in page


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Chromium:
    """A headless Chromium speaking the DevTools protocol on fds 3 (its input) and 4 (its output)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # above 4, so that placing them at 3 and 4 in the child cannot overwrite one with the other
        hi_r, hi_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        for fd in (to_r, from_w):
            os.close(fd)

        def fds() -> None:
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1200,900", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(hi_r)
        os.close(hi_w)
        self._w = os.fdopen(to_w, "wb", buffering=0)
        self._r = os.fdopen(from_r, "rb", buffering=0)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = self._r.read(65536)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        self._w.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> None:
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
            self.events.append(self._message())

    def open(self, path: Path) -> Page:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Page.navigate", session, url=path.as_uri())
        self.wait_event("Page.loadEventFired", session)
        return Page(self, session)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._w.close()
        self._r.close()


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    def eval(self, expression: str) -> Any:
        result = self.browser.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.browser.call("Input.dispatchMouseEvent", self.session, type=kind, x=x, y=y, button="left",
                              clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.browser.call("Page.captureScreenshot", self.session, format="png")["data"])


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced truecolour PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body, pos = data[pos + 8:pos + 8 + n], pos + 12 + n
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, colour, interlace) in ((8, 2, 0), (8, 6, 0)), (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


_ROWS_JS = """(() => [...document.querySelectorAll('.job summary.row')].map(r => {
  const bar = r.querySelector('.bar').getBoundingClientRect(), row = r.getBoundingClientRect();
  const cx = bar.left + bar.width / 2, cy = bar.top + bar.height / 2;
  return {name: r.querySelector('.name').innerText, top: row.top, left: bar.left, width: bar.width, cx, cy,
          onTop: document.elementFromPoint(cx, cy) === r.querySelector('.bar'),
          colour: getComputedStyle(r.querySelector('.bar')).backgroundColor};
}))()"""


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here: apt-get install chromium-headless-shell "
                                               "(CI's .ci/run installs it)")
def test_the_report_in_a_real_headless_chromium(report, tmp_path):
    job, path = report
    browser = Chromium(_browser(), tmp_path / "profile")
    try:
        page = browser.open(path)
        rows = page.eval(_ROWS_JS)
        text = page.eval("document.body.innerText")
        assert page.eval("document.scripts.length") == 0 and page.eval("document.images.length") == 0
        assert page.eval("typeof window.__pwned") == "undefined"

        # the phases, in order, one under the other, on one timeline
        assert [r["name"] for r in rows] == PHASES
        assert [r["top"] for r in rows] == sorted(r["top"] for r in rows) and len({r["top"] for r in rows}) == 9
        job_root, attempt, signal, _, region = rows[:5]
        assert job_root["left"] <= attempt["left"] <= signal["left"] < region["left"]
        assert signal["width"] / region["width"] == pytest.approx(4.95 / 3.0, rel=0.05)  # 5 s and 3 s, to scale
        assert all(r["onTop"] for r in rows if r["width"] > 4), rows  # no bar hidden under something else

        # the finding's headline and evidence; the markup in the room name is text on the page
        assert "egress_contention — Egress / connection-establishment contention" in text
        assert "timed out after 5.0 s" in text and "timed out after 3.0 s" in text
        assert EVIL in text and f"job {job}" in text

        # the screenshot shows the bars: the failed signal connect's red at its centre, the page white around it
        shot = page.screenshot()
        (tmp_path / "report.png").write_bytes(shot)
        width, height, pixels = png_pixels(shot)
        assert (width, height) == (1200, 900)
        bpp = len(pixels[0]) // width
        red = [int(x) for x in rows[2]["colour"][4:-1].split(",")]
        x, y = int(rows[2]["cx"]), int(rows[2]["cy"])
        assert list(pixels[y][x * bpp:x * bpp + 3]) == red == [222, 53, 11], (rows[2], pixels[y][x * bpp:x * bpp + 3])
        assert list(pixels[5][5 * bpp:5 * bpp + 3]) == [255, 255, 255]
        # an attribute behind a click on its row
        assert "lk_probe.attempts_max" not in text
        page.click(attempt["cx"], attempt["top"] + 5)
        assert "lk_probe.attempts_max" in page.eval("document.body.innerText")
    finally:
        browser.close()
