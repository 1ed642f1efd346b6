"""The static pages under web/static: references, offline-ness, syntax, ids, accessibility.

Everything here reads files, except two checks that run Node (syntax and the pure helpers
of js/util.js) and one that loads each page in headless Chromium with no signaling server
behind it: the page must stay up and say it is reconnecting.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from web import STATIC_DIR

PAGES = sorted(STATIC_DIR.glob("*.html"))
SCRIPTS = sorted(STATIC_DIR.rglob("*.js"))
STYLES = sorted(STATIC_DIR.rglob("*.css"))
CHROMIUM = Path("/usr/bin/chromium")

URL_ATTRS = {"src", "href", "poster", "data", "action", "formaction"}
EXTERNAL = re.compile(r"""(?:https?:)?//[\w.-]""", re.IGNORECASE)
IMPORT_RE = re.compile(
    r"""(?:^|[;\s])(?:import|export)\s[^'"]*?\bfrom\s*["']([^"']+)["']"""
    r"""|(?:^|[;\s])import\s*["']([^"']+)["']"""
    r"""|\bimport\(\s*["']([^"']+)["']\s*\)""",
    re.MULTILINE,
)
CSS_URL_RE = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)|@import\s+["']([^"']+)["']""")
ID_REF_RE = re.compile(
    r"""getElementById\(\s*["']([^"']+)["']\s*\)"""
    r"""|querySelector(?:All)?\(\s*["']#([\w-]+)["']\s*\)"""
)


class _Page(HTMLParser):
    """Collects what the checks need from one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str, str]] = []  # (tag, attr, value)
        self.modules: list[str] = []
        self.inline_scripts: list[str] = []
        self.ids: list[str] = []
        self.html_lang: str | None = None
        self.viewport = False
        self.title = ""
        self.live_regions: list[str] = []
        self.label_for: set[str] = set()
        self.buttons: list[dict] = []  # {"attrs", "text"}
        self.videos: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self._stack: list[str] = []
        self._button: dict | None = None
        self._in_label = 0
        self._in_title = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"])
        for name, value in attrs:
            if name in URL_ATTRS and value is not None:
                self.refs.append((tag, name, value))
        if tag == "html":
            self.html_lang = a.get("lang")
        elif tag == "meta" and a.get("name") == "viewport":
            self.viewport = True
        elif tag == "title":
            self._in_title = True
        elif tag == "script":
            self._in_script = True
            if a.get("type") == "module" and a.get("src"):
                self.modules.append(a["src"])
        elif tag == "label":
            self._in_label += 1
            if a.get("for"):
                self.label_for.add(a["for"])
        elif tag == "button":
            self._button = {"attrs": a, "text": ""}
            self.buttons.append(self._button)
        elif tag == "video":
            self.videos.append(a)
        elif tag == "input" and a.get("type") not in {"hidden", "submit", "button"}:
            self.inputs.append({**a, "_wrapped": "1" if self._in_label else None})
        if a.get("aria-live") in {"polite", "assertive"} or a.get("role") in {"status", "log"}:
            self.live_regions.append(a.get("id") or tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "script":
            self._in_script = False
        elif tag == "label":
            self._in_label = max(0, self._in_label - 1)
        elif tag == "button":
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._in_script and data.strip():
            self.inline_scripts.append(data)
        if self._button is not None:
            self._button["text"] += data


@functools.cache
def parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser


def resolve(base: Path, ref: str) -> Path | None:
    """The file a relative reference names, or None for data:, fragments and the like."""
    parts = urlsplit(ref)
    if parts.scheme in {"data", "mailto", "tel", "blob"} or (not parts.path and not parts.netloc):
        return None
    assert not parts.scheme and not parts.netloc, f"{base.name}: external reference {ref!r}"
    root = STATIC_DIR if parts.path.startswith("/") else base.parent
    return (root / parts.path.lstrip("/")).resolve()


def js_imports(script: Path) -> list[str]:
    return [next(g for g in m.groups() if g) for m in IMPORT_RE.finditer(script.read_text())]


def module_closure(page: Path) -> set[Path]:
    """Every JS module a page loads, following static and dynamic imports."""
    seen: set[Path] = set()
    todo = [resolve(page, src) for src in parse(page).modules]
    while todo:
        script = todo.pop()
        if script is None or script in seen or not script.is_file():
            continue
        seen.add(script)
        todo.extend(resolve(script, ref) for ref in js_imports(script))
    return seen


def in_static(path: Path) -> bool:
    return path.is_relative_to(STATIC_DIR.resolve())


# ---------------------------------------------------------------------------------------


def test_the_pages_and_scripts_are_there():
    names = {p.relative_to(STATIC_DIR).as_posix() for p in [*PAGES, *SCRIPTS, *STYLES]}
    assert {
        "index.html",
        "kiosk.html",
        "js/rtc.js",
        "js/util.js",
        "js/media.js",
        "js/chat.js",
        "js/kiosk.js",
        "css/likeness.css",
    } <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_references_exist(page: Path):
    parsed = parse(page)
    assert parsed.modules, f"{page.name} loads no module"
    for tag, attr, value in parsed.refs:
        target = resolve(page, value)
        if target is None:
            continue
        assert in_static(target), f"{page.name}: <{tag} {attr}={value!r}> leaves web/static"
        assert target.is_file(), f"{page.name}: <{tag} {attr}={value!r}> names a missing file"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(STATIC_DIR).as_posix())
def test_module_imports_exist(script: Path):
    for ref in js_imports(script):
        assert ref.startswith(("./", "../")), f"{script.name}: import {ref!r} is not relative"
        target = resolve(script, ref)
        assert target is not None and in_static(target) and target.is_file(), (
            f"{script.name}: import {ref!r} names a missing file"
        )


@pytest.mark.parametrize("style", STYLES, ids=lambda p: p.relative_to(STATIC_DIR).as_posix())
def test_stylesheet_references_exist(style: Path):
    for match in CSS_URL_RE.finditer(style.read_text()):
        ref = next(g for g in match.groups() if g)
        target = resolve(style, ref)
        if target is not None:
            assert in_static(target) and target.is_file(), f"{style.name}: {ref!r} is missing"


def test_nothing_is_fetched_from_outside():
    """Pages must work offline: no http(s):// or protocol-relative URL anywhere."""
    offenders = []
    for path in [*PAGES, *SCRIPTS, *STYLES]:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if EXTERNAL.search(line):
                offenders.append(f"{path.relative_to(STATIC_DIR)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_inline_scripts(page: Path):
    """Logic lives in modules (a strict Content-Security-Policy stays possible)."""
    assert not parse(page).inline_scripts


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(STATIC_DIR).as_posix())
def test_module_parses(script: Path, tmp_path: Path):
    # Node reads a .js file outside a "type": "module" package as CommonJS; .mjs is a module.
    copy = tmp_path / (script.stem + ".mjs")
    copy.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_ids_used_by_scripts_exist(page: Path):
    ids = parse(page).ids
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"{page.name}: duplicate ids {duplicates}"
    missing = []
    for script in module_closure(page):
        for match in ID_REF_RE.finditer(script.read_text()):
            ref = next(g for g in match.groups() if g)
            if ref not in ids:
                missing.append(f"{script.name}: #{ref}")
    assert not missing, f"{page.name} lacks {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_accessibility_basics(page: Path):
    parsed = parse(page)
    assert parsed.html_lang, f"{page.name}: <html> has no lang"
    assert parsed.viewport, f"{page.name}: no viewport meta"
    assert parsed.title.strip(), f"{page.name}: no title"
    assert parsed.live_regions, f"{page.name}: no ARIA live region"
    assert "captions" in parsed.ids, f"{page.name}: no captions region"
    for button in parsed.buttons:
        a = button["attrs"]
        assert button["text"].strip() or a.get("aria-label") or a.get("aria-labelledby"), (
            f"{page.name}: button {a.get('id')} has no accessible name"
        )
        assert a.get("type") == "button", f"{page.name}: button {a.get('id')} lacks type=button"
    for video in parsed.videos:
        name = video.get("id")
        assert video.get("aria-label") or video.get("aria-labelledby"), f"{name}: no label"
        assert "playsinline" in video and "autoplay" in video, f"{name}: not autoplay inline"
    for field in parsed.inputs:
        labelled = field["_wrapped"] or field.get("id") in parsed.label_for
        assert labelled or field.get("aria-label"), f"{page.name}: {field.get('id')} has no label"


def test_captions_are_polite_live_regions():
    for page in PAGES:
        text = page.read_text()
        assert re.search(r'id="caption-[\w-]+"[^>]*aria-live="polite"', text), page.name


def test_kiosk_is_labelled_as_ai():
    assert "AI companion" in (STATIC_DIR / "kiosk.html").read_text()
    assert "AI-generated" in (STATIC_DIR / "index.html").read_text()


def test_styles_respect_reduced_motion():
    css = "\n".join(s.read_text() for s in STYLES)
    assert "prefers-reduced-motion" in css
    assert ":focus-visible" in css


NODE_CHECK = """
import { backoffDelay, cutAtHeard, parseRetryAfter, normalizeVolume, readParams } from "./util.mjs";
const fixed = { random: () => 0.5 };
const out = {
  delays: [1, 2, 3, 4, 5, 6, 7, 20].map((n) => backoffDelay(n, fixed)),
  jittered: Array.from({ length: 200 }, () => backoffDelay(3)),
  retryAfter: ["2", "", "nonsense", "99999"].map((v) => parseRetryAfter(v)),
  volume: [80, 0.4, "x", 250].map((v) => normalizeVolume(v, 1)),
};
const turn = ["Hello there.", "It is a fine day.", "Shall we walk?"];
out.cut = [
  cutAtHeard(turn, "Hello there. It is a"),
  cutAtHeard(turn, "It is a fine day. Shall"),
  cutAtHeard(turn, "something else"),
  cutAtHeard(turn, ""),
];
const p = readParams("?autostart=1&scale=9&volume=&avatar=%20ada%20");
out.params = [
  p.bool("autostart"), p.num("scale", 1, { max: 3 }), p.str("volume", "d"), p.str("avatar"),
];
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
def test_pure_helpers_in_node(tmp_path: Path):
    (tmp_path / "util.mjs").write_text((STATIC_DIR / "js" / "util.js").read_text())
    (tmp_path / "check.mjs").write_text(NODE_CHECK)
    result = subprocess.run(
        ["node", str(tmp_path / "check.mjs")], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["delays"] == [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert all(3200 <= d <= 4800 for d in out["jittered"])
    assert out["retryAfter"] == [2000, 0, 0, 300000]
    assert out["volume"] == [0.8, 0.4, 1, 1]
    assert out["params"] == [True, 3, "d", "ada"]
    assert out["cut"] == [
        ["Hello there. It is a…"],
        ["Hello there. It is a fine day. Shall…"],
        ["something else…"],
        ["Hello there.", "It is a fine day.", "Shall we walk?"],
    ]


# ---------------------------------------------------------------------------------------
# The pages in a real browser, with no signaling server behind them


@pytest.fixture
def static_server() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(STATIC_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
@pytest.mark.parametrize("path", ["/index.html?autostart=1", "/kiosk.html"])
def test_page_survives_without_a_server(static_server: str, path: str):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(static_server + path)
            page.wait_for_function("window.likeness && window.likeness.status === 'reconnecting'")
            hooks = page.evaluate(
                "({connected: likeness.connected, frames: likeness.videoFrames(),"
                " level: likeness.audioLevel(), errors: likeness.errors.map(e => e.code)})"
            )
            status = page.locator("#conn-status, #kiosk-status").first.text_content() or ""
        finally:
            browser.close()
    assert not errors, errors
    assert hooks["connected"] is False and hooks["frames"] == 0 and hooks["level"] == 0
    assert "offer" in hooks["errors"]  # http.server answers the POST with 501
    assert "reconnecting" in status.lower()
