"""A real browser for the tests: headless Chromium (the Debian package) renders a page
and reports what a person would see.

Why the DevTools protocol and not `--dump-dom`: headless Chromium will not make a window
narrower than 500 px (`--window-size=390,900` still lays the page out 500 px wide), so a
phone width cannot be tested with a window alone. The harness starts the browser with
`--remote-debugging-pipe` (JSON messages over fds 3 and 4, standard library only), sets
the viewport with Emulation.setDeviceMetricsOverride, loads the page itself (no copy, so
relative links and the page's origin are the real ones) and reads the DOM, the measures
and the screenshot from that one run.

Contract:
- `chromium_path()` finds the browser ($CHROMIUM, then `chromium`, `chromium-browser`);
  missing, the test fails naming scripts/dev-setup (never a skip).
- `render(source, width, height=900, screenshot=None) -> Rendered`: source is an
  http(s) URL or a local file path. The viewport is `width` x `height` CSS px at scale 1
  (a desktop browser window that size, not mobile emulation: a page without
  `<meta name="viewport" content="width=device-width">` still lays out at `width`, so
  assert that tag on the DOM). After the load event and the page's fonts, `.dom` is the
  serialized DOM (outerHTML of <html>) and `.measures` is
      {"scroll_width", "scroll_height", "inner_width", "inner_height",
       "elements": {NAME: {"x", "y", "width", "height", "visible", "fonts"}},
       "requests": [every URL the page asked for besides itself and data:/blob: URLs]}
  with one entry in "elements" per element carrying data-measure="NAME" (a NAME on two
  elements fails the test: names are unique). Boxes are CSS px from the page's top left.
  `visible` is a non-zero box that is not display:none, visibility:hidden or opacity 0
  (itself or an ancestor); `fonts` names the platform fonts that drew the element's own
  text (a Chinese label drawn in a CJK font, not in boxes).
  With `screenshot` (a name under the test output folder, see `output_path`), a full-page
  PNG `width` px wide and scroll_height tall is saved there; `.screenshot` is its path.
- `png_size(path)` reads a PNG's dimensions; `ink_pixels(path, box)` counts the pixels
  in a measured box that differ from its background (0: nothing drawn there).
- No network but the page's own: the page's host resolves as it does in this process
  (l2c_local.resolve's test names included), localhost/127.0.0.1 are themselves, every
  other name resolves to nothing, so a page that pulls a CDN script or font shows it in
  "requests" (and fails to load it). An http(s) page answering an error status fails.
- Each run is limited to 60 s; on a timeout or a browser failure the whole process group
  is killed and the failure shows the tail of Chromium's stderr. A render takes about a
  second on two cores.
"""
from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path

import pytest

RUN_SECONDS = 60
REPO = Path(__file__).resolve().parent.parent

# Runs in the page after load: the layout facts the tests assert on.
_MEASURE_JS = """
(async () => {
  await document.fonts.ready;
  const root = document.documentElement;
  const elements = {}, duplicates = [];
  for (const el of document.querySelectorAll('[data-measure]')) {
    const name = el.getAttribute('data-measure');
    if (name in elements) { duplicates.push(name); continue; }
    const r = el.getBoundingClientRect();
    const shown = el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
    elements[name] = {x: r.x, y: r.y, width: r.width, height: r.height,
                      visible: shown && r.width > 0 && r.height > 0};
  }
  return {scroll_width: root.scrollWidth, scroll_height: root.scrollHeight,
          inner_width: window.innerWidth, inner_height: window.innerHeight,
          elements, duplicates, dom: root.outerHTML};
})()
"""


@dataclasses.dataclass(frozen=True)
class Rendered:
    dom: str
    measures: dict
    screenshot: Path | None = None


def chromium_path() -> str:
    """The Chromium binary: $CHROMIUM, else `chromium` or `chromium-browser` on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        found = shutil.which(named)
        if not found:
            pytest.fail(f"CHROMIUM={named} is not an executable; unset it or fix the path",
                        pytrace=False)
        return found
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium not found: run scripts/dev-setup (installs Debian's chromium "
                "package) or set CHROMIUM to the browser binary", pytrace=False)


def output_path(name: str) -> Path:
    """Where a test writes an artefact to keep: <repo>/test-output/<name> (gitignored),
    or under $L2C_TEST_OUTPUT; parent folders are made on demand."""
    path = Path(os.environ.get("L2C_TEST_OUTPUT") or REPO / "test-output") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def render(source: str | os.PathLike, width: int, height: int = 900,
           screenshot: str | None = None) -> Rendered:
    """Render `source` in headless Chromium at `width` x `height`; see the module doc."""
    url = _url_of(source)
    with tempfile.TemporaryDirectory(prefix="l2c-chromium-") as profile:
        with _Browser(profile, width, height, _resolver_rules(url)) as browser:
            measures = browser.load_and_measure(url, width, height)
            shot = None
            if screenshot:
                shot = output_path(screenshot)
                shot.write_bytes(browser.screenshot(width, measures["scroll_height"]))
    dom = measures.pop("dom")
    return Rendered(dom=dom, measures=measures, screenshot=shot)


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR header."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        pytest.fail(f"{path} is not a PNG", pytrace=False)
    return struct.unpack(">II", head[16:24])


def ink_pixels(path, box: dict) -> int:
    """How many pixels inside `box` (a measured element's x, y, width, height) differ
    from the pixel at its top left corner, the background: 0 means nothing was drawn."""
    width, height = png_size(path)
    x0, y0 = int(box["x"]), int(box["y"])
    x1, y1 = min(x0 + int(box["width"]), width), min(y0 + int(box["height"]), height)
    if x0 >= x1 or y0 >= y1:
        return 0
    rows = list(_png_rows(Path(path), y1))
    step = len(rows[0]) // width
    background = rows[y0][x0 * step:(x0 + 1) * step]
    return sum(row[x * step:(x + 1) * step] != background
               for row in rows[y0:y1] for x in range(x0, x1))


def _png_rows(path: Path, count: int):
    """The first `count` rows of an 8-bit RGB or RGBA PNG, unfiltered (RFC 2083 6.3)."""
    data = path.read_bytes()
    width, _ = png_size(path)
    depth, colour = data[24], data[25]
    if depth != 8 or colour not in (2, 6):
        pytest.fail(f"{path}: PNG depth {depth} colour type {colour}; want 8-bit RGB(A)")
    step, pos, idat = (3 if colour == 2 else 4), 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * step
    prior = bytes(stride)
    for y in range(count):
        start = y * (stride + 1) + 1
        prior = _unfilter(raw[start - 1], raw[start:start + stride], prior, step)
        yield prior


def _unfilter(kind: int, line: bytes, prior: bytes, step: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:  # "Up", most rows of a screenshot: one bytewise add of two whole rows
        return _add_bytes(line, prior)
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - step] if i >= step else 0
        up, corner = prior[i], (prior[i - step] if i >= step else 0)
        if kind == 1:
            out[i] = (out[i] + left) & 255
        elif kind == 3:
            out[i] = (out[i] + (left + up) // 2) & 255
        else:
            out[i] = (out[i] + _paeth(left, up, corner)) & 255
    return bytes(out)


def _add_bytes(a: bytes, b: bytes) -> bytes:
    """Each byte of `a` plus the same byte of `b`, modulo 256 (no carries between bytes)."""
    low, high = int.from_bytes(b"\x7f" * len(a), "big"), int.from_bytes(b"\x80" * len(a), "big")
    x, y = int.from_bytes(a, "big"), int.from_bytes(b, "big")
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(len(a), "big")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _resolver_rules(url: str) -> str:
    """Chromium's name lookups: the page's own host pinned to the address this process
    resolves it to (so the test names l2c_local.resolve answers reach the local servers),
    loopback as itself, and every other name unresolvable."""
    rules = ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1"]
    host = urllib.parse.urlsplit(url).hostname
    if url.startswith("http") and host and host not in ("localhost", "127.0.0.1"):
        try:
            address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
        except OSError as err:
            pytest.fail(f"render: {host} does not resolve ({err})", pytrace=False)
        rules.insert(0, f"MAP {host} {address}")  # the first rule that matches applies
    return ", ".join(rules)


def _url_of(source) -> str:
    text = str(source)
    if text.startswith(("http://", "https://", "file://")):
        return text
    path = Path(text).resolve()
    if not path.is_file():
        pytest.fail(f"render: no page at {path}", pytrace=False)
    return path.as_uri()


def _live_members(group: int) -> list[int]:
    """Processes of a process group that have not exited (zombies have: only a reaper
    is missing, and orphans are reaped by init)."""
    members = []
    for entry in os.scandir("/proc"):
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(group) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _above_4(fd: int) -> int:
    """A close-on-exec copy of `fd` numbered 5 or more; `fd` itself is closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


class _Browser:
    """One headless Chromium driven over --remote-debugging-pipe, one page target."""

    def __init__(self, profile: str, width: int, height: int, resolver_rules: str):
        self.profile = profile
        self.deadline = time.monotonic() + RUN_SECONDS
        self.stderr_path = Path(profile) / "chromium-stderr.txt"
        self.args = [
            chromium_path(), "--headless", "--no-sandbox", "--disable-gpu",
            "--hide-scrollbars", f"--window-size={width},{height}",
            f"--user-data-dir={profile}", "--remote-debugging-pipe",
            "--no-first-run", "--no-default-browser-check", "--no-proxy-server",
            f"--host-resolver-rules={resolver_rules}",
            "about:blank",
        ]
        self.next_id = 0
        self.buffer = b""
        self.events: list[dict] = []

    def __enter__(self):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # Above 4, so that putting them onto 3 and 4 in the child cannot clobber either.
        to_child_r, from_child_w = _above_4(to_child_r), _above_4(from_child_w)

        def onto_fds_3_and_4():
            # The pipe protocol's fixed numbers: Chromium reads fd 3 and writes fd 4.
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        try:
            with open(self.stderr_path, "wb") as err:
                # close_fds=False keeps the dup2'd 3 and 4; every fd Python opened is
                # close-on-exec already (PEP 446), so nothing else leaks into the browser.
                self.proc = subprocess.Popen(
                    self.args, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    close_fds=False, preexec_fn=onto_fds_3_and_4, start_new_session=True)
        except OSError:
            os.close(self.to_child)
            os.close(self.from_child)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target,
                                     flatten=True)["sessionId"]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:  # closing lets the profile's files settle
                os.write(self.to_child, b'{"id": 0, "method": "Browser.close"}\0')
                self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self._kill_group()
            os.close(self.to_child)
            os.close(self.from_child)

    def _kill_group(self):
        # The browser's zygote, GPU and renderer processes share its process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        # SIGKILL is not instant for a renderer busy in a script: wait until it is gone.
        give_up = time.monotonic() + 5
        while _live_members(self.proc.pid) and time.monotonic() < give_up:
            time.sleep(0.02)

    def load_and_measure(self, url: str, width: int, height: int) -> dict:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)
        self.load(url)
        measured = self.call("Runtime.evaluate", session=True, expression=_MEASURE_JS,
                             awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in measured:
            self.fail(f"measuring {url}: {measured['exceptionDetails']}")
        measures = measured["result"]["value"]
        duplicates = measures.pop("duplicates")
        if duplicates:
            self.fail(f"data-measure names used twice on {url}: {sorted(set(duplicates))}")
        measures["requests"] = self.requests(url)
        self.add_fonts(measures["elements"])
        return measures

    def load(self, url: str):
        """Navigate and wait for the load event; an error status fails the test."""
        for domain in ("Page.enable", "Network.enable"):
            self.call(domain, session=True)
        self.events.clear()
        nav = self.call("Page.navigate", session=True, url=url)
        if nav.get("errorText"):
            self.fail(f"loading {url}: {nav['errorText']}")
        # The load event that counts is the one after our document replaced about:blank.
        navigated = self.wait_for(lambda ev: ev["method"] == "Page.frameNavigated"
                                  and ev["params"]["frame"].get("loaderId") == nav["loaderId"]
                                  and not ev["params"]["frame"].get("parentId"))
        self.wait_for(lambda ev: ev["method"] == "Page.loadEventFired", after=navigated)
        self.check_status(url, nav["frameId"])

    def add_fonts(self, elements: dict):
        """Each measured element's "fonts": the platform fonts that drew its own text."""
        if not elements:
            return
        self.call("DOM.enable", session=True)
        self.call("CSS.enable", session=True)
        root = self.call("DOM.getDocument", session=True, depth=0)["root"]["nodeId"]
        for name, box in elements.items():
            node = self.call("DOM.querySelector", session=True, nodeId=root,
                             selector=f"[data-measure={json.dumps(name)}]")["nodeId"]
            used = self.call("CSS.getPlatformFontsForNode", session=True, nodeId=node)
            box["fonts"] = [f["familyName"] for f in used["fonts"]]

    def check_status(self, url: str, frame: str):
        """An error page (a refused signature, a missing object) is not the page."""
        for ev in self.events:
            params = ev["params"]
            if (ev["method"] == "Network.responseReceived" and params["type"] == "Document"
                    and params.get("frameId") == frame):
                status = params["response"].get("status", 0)
                if url.startswith("http") and status >= 400:
                    self.fail(f"loading {url}: HTTP {status}")

    def requests(self, url: str) -> list[str]:
        """Every URL the page asked for, in order, besides the page itself and the
        favicon the browser asks for on its own (at random, after the load event)."""
        origin = urllib.parse.urlsplit(url)
        browser_favicon = f"{origin.scheme}://{origin.netloc}/favicon.ico"
        seen = []
        for ev in self.events:
            if ev["method"] != "Network.requestWillBeSent":
                continue
            params = ev["params"]
            asked = params["request"]["url"]
            if params["type"] == "Document" and asked == url:
                continue
            if asked == browser_favicon and params["initiator"]["type"] == "other":
                continue
            if not asked.startswith(("data:", "blob:")) and asked not in seen:
                seen.append(asked)
        return seen

    def screenshot(self, width: int, page_height: int) -> bytes:
        shot = self.call("Page.captureScreenshot", session=True, format="png",
                         captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width,
                               "height": page_height, "scale": 1})
        return base64.b64decode(shot["data"])

    # --- the pipe protocol: JSON messages, each ended by a NUL byte ---

    def call(self, method: str, session: bool = False, **params) -> dict:
        sent = self._send(method, params, session)
        while True:
            msg = self._read()
            if msg.get("id") == sent:
                if "error" in msg:
                    self.fail(f"{method}: {msg['error'].get('message')}")
                return msg["result"]
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, matches, after: int = -1) -> int:
        """Index in self.events of the first event past `after` that `matches`."""
        seen = after + 1
        while True:
            for i in range(seen, len(self.events)):
                if matches(self.events[i]):
                    return i
            seen = len(self.events)
            msg = self._read()
            if "method" in msg:
                self.events.append(msg)

    def _send(self, method: str, params: dict | None = None, session: bool = False) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        try:
            os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            self.proc.wait()
            self.fail(f"chromium exited (code {self.proc.returncode})")
        return self.next_id

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.fail(f"no answer within {RUN_SECONDS} s")
            ready, _, _ = select.select([self.from_child], [], [], left)
            if ready:
                chunk = os.read(self.from_child, 1 << 20)
                if not chunk:
                    self.proc.wait()
                    self.fail(f"chromium exited (code {self.proc.returncode})")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def fail(self, what: str):
        self._kill_group()
        pytest.fail(f"chromium: {what}\n{' '.join(self.args)}\n"
                    f"stderr tail:\n{self._stderr_tail()}", pytrace=False)

    def _stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(none)"
        # Without a session bus every run logs D-Bus errors; they explain nothing.
        kept = [ln for ln in text.splitlines() if "dbus" not in ln.lower()]
        return "\n".join(kept[-lines:]) or "(empty)"
