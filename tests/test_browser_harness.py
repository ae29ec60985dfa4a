"""The browser harness (tests/browser.py) measures what it says: each test writes a page
whose answer is known and holds the harness's report to it."""
import functools
import http.server
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

import browser

PHONE, LAPTOP = 390, 1280


def page(tmp_path, body: str, head: str = "", name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text('<!doctype html><html><head><meta charset="utf-8">'
                    '<meta name="viewport" content="width=device-width">'
                    f"{head}</head><body>{body}</body></html>", encoding="utf-8")
    return path


def test_a_page_wider_than_a_phone_scrolls_sideways_and_a_fluid_one_does_not(tmp_path):
    wide = browser.render(page(tmp_path, '<table style="width:700px"><tr><td>x</td></tr></table>',
                               name="wide.html"), PHONE)
    fluid = browser.render(page(tmp_path, '<p style="max-width:700px">x</p>',
                                name="fluid.html"), PHONE)

    # 390, not Chromium's 500 px minimum window width: the viewport is emulated.
    assert wide.measures["inner_width"] == fluid.measures["inner_width"] == PHONE
    assert wide.measures["scroll_width"] > PHONE
    assert fluid.measures["scroll_width"] == PHONE


def test_elements_hidden_by_css_are_reported_invisible_with_their_boxes(tmp_path):
    rendered = browser.render(page(tmp_path, """
        <p data-measure="shown" style="width:200px">shown</p>
        <p data-measure="none" style="display:none">none</p>
        <p data-measure="hidden" style="visibility:hidden">hidden</p>
        <p data-measure="transparent" style="opacity:0">transparent</p>
        <div style="display:none"><span data-measure="inside-none">inside</span></div>
        <p data-measure="empty" style="height:0;overflow:hidden"></p>"""), LAPTOP)

    elements = rendered.measures["elements"]
    assert elements["shown"]["visible"] is True
    assert elements["shown"]["width"] == 200 and elements["shown"]["height"] > 0
    for name in ("none", "hidden", "transparent", "inside-none", "empty"):
        assert elements[name]["visible"] is False, name
    # visibility:hidden keeps its box: invisible is not the same as zero-sized.
    assert elements["hidden"]["height"] > 0


def test_a_data_measure_name_used_twice_fails_the_test(tmp_path):
    twice = page(tmp_path, '<p data-measure="row">a</p><p data-measure="row">b</p>')
    with pytest.raises(pytest.fail.Exception, match=r"used twice.*\['row'\]"):
        browser.render(twice, LAPTOP)


def test_a_page_pulling_a_cdn_script_or_font_lists_them_and_a_self_contained_one_none(
        tmp_path):
    cdn = browser.render(page(tmp_path, '<p style="font-family:Cdn">x</p>', head="""
        <script src="https://cdn.example/chart.js"></script>
        <style>@font-face { font-family: Cdn; src: url(https://cdn.example/font.woff2); }
        </style>""", name="cdn.html"), LAPTOP)
    own = browser.render(page(tmp_path, """
        <style>p { color: #333 }</style><script>document.title = "inline";</script>
        <svg width="20" height="20"><rect width="20" height="20"/></svg>
        <img alt="" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
        <p>x</p>""", name="own.html"), LAPTOP)

    assert "https://cdn.example/chart.js" in cdn.measures["requests"]
    assert "https://cdn.example/font.woff2" in cdn.measures["requests"]
    assert own.measures["requests"] == []


def test_a_page_on_a_local_test_name_loads_with_its_own_files_and_an_error_status_fails(
        tmp_path):
    page(tmp_path, '<link rel="stylesheet" href="style.css"><p data-measure="p">x</p>'
         '<img alt="" src="https://cdn.example/logo.png">', name="index.html")
    (tmp_path / "style.css").write_text("p { width: 123px }")
    handler = functools.partial(QuietHandler, directory=tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # A name only this process resolves (l2c_local.resolve), as the OSS tests address
    # buckets: the browser must reach it too.
    base = f"http://l2c-backups.oss-local.test:{server.server_port}"
    try:
        rendered = browser.render(f"{base}/index.html", LAPTOP)
        with pytest.raises(pytest.fail.Exception, match="HTTP 404"):
            browser.render(f"{base}/missing.html", LAPTOP)
    finally:
        server.shutdown()

    assert rendered.measures["elements"]["p"]["width"] == 123
    assert rendered.measures["requests"] == [f"{base}/style.css", "https://cdn.example/logo.png"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_chinese_label_is_drawn_in_a_cjk_font_and_shows_in_the_screenshot(tmp_path):
    rendered = browser.render(page(tmp_path, """
        <h1 data-measure="zh" style="display:inline-block">备份状态：每日</h1>
        <p data-measure="blank" style="width:100px;height:40px"></p>"""),
        PHONE, screenshot="harness/chinese-label-phone.png")

    assert "备份状态：每日" in rendered.dom
    zh_fonts = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True,
                              text=True).stdout
    drawn_with = rendered.measures["elements"]["zh"]["fonts"]
    assert drawn_with and all(font in zh_fonts for font in drawn_with), (
        f"Chinese drawn with {drawn_with}, not a CJK font: run scripts/dev-setup")
    assert rendered.screenshot == browser.output_path("harness/chinese-label-phone.png")
    assert browser.png_size(rendered.screenshot) == (PHONE, 900)
    assert browser.ink_pixels(rendered.screenshot, rendered.measures["elements"]["zh"]) > 200
    assert browser.ink_pixels(rendered.screenshot, rendered.measures["elements"]["blank"]) == 0


def test_a_screenshot_holds_the_whole_page_under_the_chosen_output_folder(
        tmp_path, monkeypatch):
    monkeypatch.setenv("L2C_TEST_OUTPUT", str(tmp_path / "out"))
    rendered = browser.render(page(tmp_path, """
        <div style="height:2400px"></div><p data-measure="last">the end</p>"""),
        LAPTOP, height=700, screenshot="tall.png")

    assert rendered.screenshot == tmp_path / "out" / "tall.png"
    assert rendered.measures["inner_height"] == 700
    width, height = browser.png_size(rendered.screenshot)
    assert width == LAPTOP and height == rendered.measures["scroll_height"] > 2400
    assert browser.ink_pixels(rendered.screenshot, rendered.measures["elements"]["last"]) > 0


def test_without_chromium_the_test_fails_naming_dev_setup(tmp_path, monkeypatch):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="scripts/dev-setup"):
        browser.chromium_path()


def test_a_page_that_never_loads_times_out_and_leaves_no_browser_running(
        tmp_path, monkeypatch):
    monkeypatch.setattr(browser, "RUN_SECONDS", 2)
    # Profiles under tmp_path: this test's browsers are told apart from other tests'.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stuck = page(tmp_path, "<script>while (true) {}</script>")

    with pytest.raises(pytest.fail.Exception, match="no answer within 2 s(.|\n)*stderr tail"):
        browser.render(stuck, LAPTOP)

    assert live_processes_mentioning(str(tmp_path)) == []


def test_a_wedged_browser_is_killed_with_every_process_it_started(tmp_path, monkeypatch):
    # Stands in for a browser whose main process hangs: it never answers the pipe and
    # has a child of its own, which killing the main process alone would leave behind.
    wedged = tmp_path / "wedged-chromium"
    wedged.write_text('#!/bin/sh\n[ "$1" = child ] || "$0" child &\n'
                      'echo "wedged: no DevTools" >&2\nsleep 300\n')
    wedged.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(wedged))
    monkeypatch.setattr(browser, "RUN_SECONDS", 2)

    with pytest.raises(pytest.fail.Exception, match="no answer(.|\n)*wedged: no DevTools"):
        browser.render(page(tmp_path, "<p>x</p>"), LAPTOP)

    assert live_processes_mentioning(str(wedged)) == []


def live_processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found
