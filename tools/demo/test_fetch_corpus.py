"""Tests for the demo corpus fetcher: HTML to text, FAQ splitting, fortunes, apt-get handling.

All inputs are small snippets written for these tests; nothing is downloaded. apt-get is
replaced by a fake script on PATH.
"""

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

# Loaded by path so the test works whether or not tools/ is an importable package.
_spec = importlib.util.spec_from_file_location(
    "astrai_demo_fetch_corpus", Path(__file__).with_name("fetch_corpus.py"))
fc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fc  # dataclasses look their module up here
_spec.loader.exec_module(fc)


def test_drops_head_script_style_and_navigation():
    html = """<html><head><title>Title only in head</title><style>p {}</style></head>
    <body><div class="navheader"><table><tr><td>Prev</td></tr></table></div>
    <nav>menu</nav><script>var x = 1;</script>
    <p>Kept   text
    over two lines.</p>
    <div class="navfooter"><div>Next</div><div>nested</div></div><p>After the footer.</p>
    </body></html>"""
    assert fc.html_to_text(html) == "Kept text over two lines.\n\nAfter the footer."


def test_blocks_lists_and_pre():
    html = """<h2>Install</h2><p>Run:</p>
<pre>
$ make
    indented  line

last</pre>
<ul><li><p>first <b>item</b></p><p>more of it</p></li><li>second</li></ul>"""
    assert fc.html_to_text(html) == (
        "Install\n\nRun:\n\n$ make\n    indented  line\n\nlast\n\n"
        "- first item\n\nmore of it\n\n- second")


def test_chinese_line_breaks_and_full_width_punctuation():
    html = "<p>这是第一行，\n  这是第二行。English\nword 与 中文\u3000混排（括号）！</p>"
    assert fc.html_to_text(html) == "这是第一行，这是第二行。English word 与 中文\u3000混排（括号）！"


def test_chinese_table_cells_stay_apart():
    html = "<table><tr><th> 软件包 </th>\n<th> 说明 </th></tr></table>"
    assert fc.html_to_text(html) == "软件包 说明"


def test_email_addresses_are_masked():
    html = "<p>Write to a.b-c@lists.example.org。</p><pre>Maintainer: Jo &lt;jo@example.com&gt;</pre>"
    assert fc.html_to_text(html) == "Write to [email]。\n\nMaintainer: Jo <[email]>"


FAQ = """<html><body><div class="navheader">Prev Next</div>
<h1 class="title"><a id="ch"></a>Chapter 3. Things</h1>
<h2 class="title"><a id="colour"></a>3.1. What colour is the sky?</h2>
<p>Blue,
mostly.</p>
<h3 class="title"><a id="night"></a>3.1.1. At night</h3><p>Dark.</p>
<h2 class="title"><a id="tools"></a>3.2. Useful tools</h2><ul><li>a hammer</li></ul>
<h2 class="title"><a id="empty"></a>3.3. Is this empty?</h2>
<h3 class="title">Some remark</h3><p>Not a question.</p>
<h2 class="title"><a id="zh"></a>3.4. 天空是什么颜色？！</h2><p>蓝色的。</p>
</body></html>"""


def test_split_faq_pairs():
    pairs = fc.split_faq(FAQ)
    assert pairs == [
        ("colour", "What colour is the sky?", "Blue, mostly.\n\n3.1.1. At night\n\nDark."),
        ("tools", "Useful tools", "- a hammer"),
        ("empty", "Is this empty?", "Some remark\n\nNot a question."),
        ("zh", "天空是什么颜色？！", "蓝色的。"),
    ]


def test_fortune_entries_strip_colour_codes():
    text = "\x1b[32m《题》\x1b[m\n\n第一句，\n第二句。\n%\nsecond \x1b[;\x1b[34;1mmentry\x1b[m\n%\n"
    assert fc.fortune_entries(text) == ["《题》\n第一句，\n第二句。", "second entry"]


def _fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_download_runs_apt_get_update_once(tmp_path, monkeypatch):
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    # The fake apt-get only finds packages after "apt-get update" has run.
    _fake_tool(bin_dir, "apt-get", f"""
if [ "$1" = update ]; then touch {tmp_path}/updated; echo update >> {tmp_path}/calls; exit 0; fi
if [ ! -e {tmp_path}/updated ]; then echo "E: Unable to locate package $2" >&2; exit 100; fi
shift; for p in "$@"; do touch "${{p}}_1.0_all.deb"; done
""")
    _fake_tool(bin_dir, "dpkg-deb", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    debs = fc.download_packages(["pkg-a", "pkg-b"], work, log=lambda *_: None)
    assert sorted(p.name for p in debs.values()) == ["pkg-a_1.0_all.deb", "pkg-b_1.0_all.deb"]
    assert (tmp_path / "calls").read_text() == "update\n"


def test_download_error_names_the_corpus_option(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "apt-get", 'echo "E: Failed to fetch something" >&2; exit 100\n')
    _fake_tool(bin_dir, "dpkg-deb", "exit 0\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(fc.CorpusFetchError, match=r"(?s)Failed to fetch.*--corpus DIR"):
        fc.download_packages(["pkg-a"], tmp_path / "work", log=lambda *_: None)


def test_reuses_a_complete_corpus_without_fetching(tmp_path, monkeypatch):
    (tmp_path / fc.MANIFEST).write_text(json.dumps({"format": 1}))
    monkeypatch.setattr(fc, "download_packages", lambda *a, **k: pytest.fail("must not download"))
    messages = []
    assert fc.fetch_corpus(tmp_path, log=messages.append) == tmp_path
    assert "Reusing" in messages[0]
