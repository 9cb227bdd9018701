"""Build the demo's bilingual (English + Simplified Chinese) corpus from Debian packages.

The packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into
a scratch folder, so nothing is installed system-wide. The result is cached under
``$XDG_CACHE_HOME/astrai/corpus`` (or ``~/.cache/astrai/corpus``) and has the same
layout as the project's test corpus:

    pretrain/{en,zh}/<source>__<document>.txt   one document per file
    heldout/{en,zh}/...                         ~3% of documents, never in pretrain
    sft.jsonl, heldout/sft.jsonl                Debian FAQ question/answer pairs
    licenses/<package>.copyright, README.md, manifest.json

``manifest.json`` is written last, and the folder is built under a temporary name and
renamed into place, so a folder holding a manifest is always complete.

Usage: python tools/demo/fetch_corpus.py [--cache-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MANIFEST = "manifest.json"
HELDOUT_PERCENT = 3
SFT_HELDOUT_PERCENT = 10
MIN_DOC_CHARS = 200  # shorter pages are tables of contents or stubs


@dataclass(frozen=True)
class Source:
    package: str
    lang: str
    name: str  # the same in both languages, so held-out keys are language-neutral
    kind: str  # "html", "faq" or "fortune"
    root: str  # folder inside the package
    pattern: str
    skip: str = r"^$"  # regex on the path relative to root


SOURCES = [
    Source("debian-faq", "en", "debian-faq", "faq", "usr/share/doc/debian/FAQ", "*.en.html",
           r"^(index|faqinfo)\."),
    Source("debian-faq-zh-cn", "zh", "debian-faq", "faq", "usr/share/doc/debian/FAQ/zh-cn",
           "*.zh-cn.html", r"^(index|faqinfo)\."),
    Source("maint-guide", "en", "maint-guide", "html", "usr/share/doc/maint-guide/html", "*.en.html"),
    Source("maint-guide-zh-cn", "zh", "maint-guide", "html",
           "usr/share/doc/maint-guide-zh-cn/html", "*.zh-cn.html"),
    Source("debian-reference-en", "en", "debian-reference", "html", "usr/share/debian-reference",
           "*.en.html"),
    Source("debian-reference-zh-cn", "zh", "debian-reference", "html",
           "usr/share/debian-reference", "*.zh-cn.html"),
    Source("fortunes-zh", "zh", "fortunes-zh", "fortune", "usr/share/games/fortunes", "*"),
    # Index, search, contents and download pages and the changelog are lists of names,
    # links and issue numbers rather than prose.
    Source("python3.11-doc", "en", "python-docs", "html", "usr/share/doc/python3.11/html",
           "**/*.html", r"^(_|genindex|search\.|py-modindex|contents\.|download\.|whatsnew/changelog)"),
]
PACKAGES = list(dict.fromkeys(s.package for s in SOURCES))


class CorpusFetchError(RuntimeError):
    """The packages could not be downloaded or unpacked."""


# --------------------------------------------------------------------------- HTML to text

_SKIP_TAGS = {"head", "script", "style", "nav", "noscript", "form", "button", "template", "svg"}
_SKIP_CLASSES = {
    "navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples",
    "related", "sphinxsidebar", "footer", "mobile-nav", "headerlink", "clearer",
    "version_switcher_placeholder", "language_switcher_placeholder",
}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = _HEADINGS | {
    "p", "div", "section", "article", "main", "ul", "ol", "dl", "li", "dt", "dd", "table", "tr",
    "thead", "tbody", "tfoot", "caption", "blockquote", "pre", "br", "hr", "figure", "figcaption",
}
_VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"}

# Ideographs, CJK and full-width punctuation, kana and bopomofo.
_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_CJK_BREAK = re.compile(rf"(?<=[{_CJK}])[ \t\r\f\xa0]*\n[ \t\r\n\f\xa0]*(?=[{_CJK}])")
# Not \s: that would also fold U+3000 (ideographic space), which must survive as it is.
# DocBook writes &nbsp; between "Chapter 1." and its title, so U+00A0 is folded too.
_SPACES = re.compile(r"[ \t\r\n\f\v\xa0]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CELL = "\x00"  # marks a table-cell boundary inside the text buffer
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Block:
    kind: str  # "p", "pre" or "h1".."h6"
    text: str
    anchor: str = ""  # the id of a heading, if it has one


def normalise_space(text: str) -> str:
    """Drop a line break between two CJK characters, fold other whitespace runs to one space."""
    return _SPACES.sub(" ", _CJK_BREAK.sub("", text)).strip()


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._buf: list[str] = []
        self._prefix = ""  # "- " until the current list item has produced its first paragraph
        self._skip_tag = ""
        self._skip_depth = 0
        self._pre = 0
        self._heading = ""
        self._anchor = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag:
            self._skip_depth += tag == self._skip_tag
            return
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        if (tag in _SKIP_TAGS or classes & _SKIP_CLASSES
                or attributes.get("role") in ("navigation", "search")):
            if tag not in _VOID:
                self._skip_tag, self._skip_depth = tag, 1
            return
        if self._heading and not self._anchor and attributes.get("id"):
            self._anchor = attributes["id"] or ""
        if tag in _BLOCKS:
            self._flush()
        if tag == "li":
            self._prefix = "- "
        elif tag == "pre":
            self._pre += 1
        elif tag in _HEADINGS:
            self._heading, self._anchor = tag, attributes.get("id") or ""
        elif tag in ("td", "th"):
            self._buf.append(_CELL)

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if not self._skip_depth:
                    self._skip_tag = ""
            return
        if tag in _BLOCKS:
            self._flush()
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag == self._heading:
            self._heading = ""
        elif tag == "li":
            self._prefix = ""

    def handle_data(self, data: str) -> None:
        if not self._skip_tag:
            self._buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        raw, self._buf = "".join(self._buf), []
        if self._pre:
            kind, text = "pre", raw.replace(_CELL, "").replace("\r\n", "\n").strip("\n").rstrip()
        else:
            # Cells are normalised one by one: a source line break between two Chinese
            # cells must not glue them together.
            cells = (normalise_space(cell) for cell in raw.split(_CELL))
            kind, text = self._heading or "p", " ".join(c for c in cells if c)
        if not text.strip():
            return
        if kind == "p" and self._prefix:
            text, self._prefix = self._prefix + text, ""
        self.blocks.append(Block(kind, text, self._anchor if kind in _HEADINGS else ""))


def html_to_blocks(html: str) -> list[Block]:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.blocks


def mask_emails(text: str) -> str:
    return _EMAIL.sub("[email]", text)


def html_to_text(html: str) -> str:
    """Convert an HTML page to plain text, one block per paragraph, with e-mail addresses masked."""
    return mask_emails("\n\n".join(b.text for b in html_to_blocks(html)))


_NUMBER = re.compile(r"^\d+(?:\.\d+)*\.?\s*")
_FAQ_ENTRY = re.compile(r"^\d+\.\d+\.\s")  # "7.3. ...": a second-level entry of the FAQ
_QUESTION_END = re.compile(r"[?？][!！]?$")


def split_faq(html: str) -> list[tuple[str, str, str]]:
    """Return (id, question, answer) for every section of a FAQ page whose title is a question.

    A title is a question if it ends with ? or ？, or is a numbered entry such as
    "7.3. Title". The answer runs to the next heading of the same or a higher level, so
    sub-sections stay in it. The id is the heading's anchor, the same in every language.
    """
    blocks = html_to_blocks(html)
    pairs = []
    for i, block in enumerate(blocks):
        if block.kind not in _HEADINGS or block.kind == "h1":
            continue
        if not (_QUESTION_END.search(block.text) or _FAQ_ENTRY.match(block.text)):
            continue
        body = []
        for later in blocks[i + 1:]:
            if later.kind in _HEADINGS and later.kind <= block.kind:
                break
            body.append(later.text)
        question = _NUMBER.sub("", block.text)
        answer = mask_emails("\n\n".join(body))
        number = _NUMBER.match(block.text)
        key = block.anchor or (number.group().strip() if number else question)
        if question and answer:
            pairs.append((key, mask_emails(question), answer))
    return pairs


def fortune_entries(text: str) -> list[str]:
    """Split a fortune data file into entries, removing colour codes and blank lines inside entries."""
    # Some codes are nested ("ESC[;ESC[34;1mm"), so strip until nothing is left.
    while _ANSI.search(text):
        text = _ANSI.sub("", text)
    entries = []
    for chunk in re.split(r"^%[ \t]*$", text.replace("\r\n", "\n"), flags=re.M):
        lines = [line.rstrip() for line in chunk.split("\n") if line.strip()]
        if lines:
            entries.append(mask_emails("\n".join(lines)))
    return entries


# --------------------------------------------------------------------------- packages

def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # English messages, because download_packages matches apt-get's error text.
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def _fail(what: str, detail: str = "") -> CorpusFetchError:
    tail = "\n".join(detail.strip().splitlines()[-5:])
    return CorpusFetchError(
        f"{what}{': ' + tail if tail else ''}\n"
        "The demo corpus is built from Debian 12 packages. If they cannot be fetched here, "
        "pass any folder of .txt/.jsonl files with --corpus DIR instead.")


def download_packages(packages: list[str], work: Path, log=print) -> dict[str, Path]:
    """Download the .deb files into work with apt-get and return them by package name."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise _fail("apt-get or dpkg-deb not found (a Debian-based system is required)")
    work.mkdir(parents=True, exist_ok=True)
    log(f"Downloading {len(packages)} packages with apt-get: {', '.join(packages)}")
    result = _run(["apt-get", "download", *packages], cwd=work)
    missing = ("Unable to locate package", "no installation candidate", "Can't select")
    if result.returncode and any(m in result.stderr for m in missing):
        # A fresh container often has no package lists at all; fetch them once.
        log("apt-get does not know the packages; running apt-get update once")
        update = _run(["apt-get", "update"])
        if update.returncode:
            raise _fail("apt-get update failed (it needs root)", update.stderr)
        result = _run(["apt-get", "download", *packages], cwd=work)
    if result.returncode:
        raise _fail(f"apt-get download {' '.join(packages)} failed", result.stderr)

    debs = {}
    for pkg in packages:
        found = sorted(work.glob(f"{pkg}_*.deb"))
        if not found:
            raise _fail(f"apt-get download left no .deb file for {pkg}")
        debs[pkg] = found[-1]
    size = sum(p.stat().st_size for p in debs.values())
    log(f"Downloaded {len(debs)} packages, {size / 1e6:.1f} MB")
    return debs


def unpack(deb: Path, dest: Path) -> str:
    """Unpack a .deb into dest (not the system) and return the package version."""
    dest.mkdir(parents=True, exist_ok=True)
    extract = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if extract.returncode:
        raise _fail(f"dpkg-deb -x {deb} failed", extract.stderr)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if version.returncode:
        raise _fail(f"dpkg-deb -f {deb} Version failed", version.stderr)
    return version.stdout.strip()


# --------------------------------------------------------------------------- corpus

def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "astrai" / "corpus"


def _bucket(key: str) -> int:
    return int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % 100


def _document_name(rel: str) -> str:
    """'library/os.html' -> 'library-os'; 'ch01.zh-cn.html' -> 'ch01'."""
    stem = re.sub(r"(\.(en|zh-cn))?\.html$", "", rel)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)


def _source_files(src: Source, root: Path) -> list[Path]:
    folder = root / src.root
    skip = re.compile(src.skip)
    return [p for p in sorted(folder.glob(src.pattern))
            if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
            and not skip.search(p.relative_to(folder).as_posix())]


def _collect(src: Source, root: Path, docs: list, pairs: list) -> None:
    folder = root / src.root
    for path in _source_files(src, root):
        text = path.read_text(encoding="utf-8", errors="replace")
        if src.kind == "fortune":
            # Split big collections so that one document stays a few hundred kB.
            entries = fortune_entries(text)
            for n in range(0, len(entries), 500):
                doc = f"{path.name}-{n // 500 + 1:03d}"
                docs.append((src, doc, "\n\n".join(entries[n:n + 500])))
        elif src.kind == "faq":
            for key, question, answer in split_faq(text):
                pairs.append((src, key, question, answer))
        else:
            body = html_to_text(text)
            if len(body) >= MIN_DOC_CHARS:
                docs.append((src, _document_name(path.relative_to(folder).as_posix()), body))


def _pick_heldout(docs: list) -> set[str]:
    """Choose the held-out document keys: ~3% by hash, and at least one per language."""
    keys = {f"{src.name}/{doc}" for src, doc, _ in docs}
    heldout = {k for k in keys if _bucket(k) < HELDOUT_PERCENT}
    for lang in ("en", "zh"):
        lang_keys = sorted({f"{s.name}/{d}" for s, d, _ in docs if s.lang == lang}, key=_bucket)
        if lang_keys and not heldout & set(lang_keys):
            heldout.add(lang_keys[0])
    return heldout


def _write_jsonl(path: Path, rows: list[tuple]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for _src, _key, question, answer in rows:
            msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def build_corpus(root: Path, out: Path, versions: dict[str, str], log=print) -> dict:
    docs: list = []
    pairs: list = []
    for src in SOURCES:
        before = len(docs), len(pairs)
        _collect(src, root / src.package, docs, pairs)
        log(f"  {src.package}: {len(docs) - before[0]} documents, {len(pairs) - before[1]} FAQ pairs")

    heldout = _pick_heldout(docs)
    counts: dict[str, dict[str, int]] = {}
    for src, doc, body in docs:
        split = "heldout" if f"{src.name}/{doc}" in heldout else "pretrain"
        folder = out / split / src.lang
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{src.name}__{doc}.txt").write_text(body + "\n", encoding="utf-8", newline="\n")
        c = counts.setdefault(f"{split}/{src.lang}", {"files": 0, "chars": 0, "bytes": 0})
        c["files"] += 1
        c["chars"] += len(body) + 1
        c["bytes"] += len(body.encode("utf-8")) + 1

    is_held = [_bucket(f"{src.name}/{key}") < SFT_HELDOUT_PERCENT for src, key, *_ in pairs]
    sft_held = [p for p, h in zip(pairs, is_held) if h]
    sft_train = [p for p, h in zip(pairs, is_held) if not h]
    _write_jsonl(out / "sft.jsonl", sft_train)
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "heldout" / "sft.jsonl", sft_held)
    sft = {"train": len(sft_train), "heldout": len(sft_held),
           **{lang: sum(p[0].lang == lang for p in pairs) for lang in ("en", "zh")}}

    (out / "licenses").mkdir(parents=True, exist_ok=True)
    for pkg in versions:
        shutil.copyfile(root / pkg / "usr/share/doc" / pkg / "copyright",
                        out / "licenses" / f"{pkg}.copyright")
    _write_readme(out, versions, counts, sft)
    return {"counts": counts, "sft_pairs": sft}


def _write_readme(out: Path, versions: dict[str, str], counts: dict, sft: dict) -> None:
    lines = ["# AstrAI demo corpus", "",
             "Built by `tools/demo/fetch_corpus.py` from Debian documentation packages.",
             "Each package's licence is its copyright file, copied to `licenses/`.", "",
             "| package | version | licence |", "|---|---|---|"]
    lines += [f"| {p} | {v} | `licenses/{p}.copyright` |" for p, v in versions.items()]
    lines += ["", "| split/lang | files | chars | UTF-8 bytes |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {c['files']} | {c['chars']} | {c['bytes']} |" for k, c in sorted(counts.items())]
    lines += ["", f"FAQ pairs: {sft['train']} in `sft.jsonl`, {sft['heldout']} in `heldout/sft.jsonl` "
              f"({sft['en']} English, {sft['zh']} Chinese).",
              "Never train on anything under `heldout/`.", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8", newline="\n")


def fetch_corpus(cache_dir: Path | None = None, *, force: bool = False, log=print) -> Path:
    """Return the corpus folder, building it first unless a complete one is cached."""
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    if (target / MANIFEST).is_file() and not force:
        log(f"Reusing the complete corpus in {target} (pass --force to rebuild it)")
        return target

    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target so the final rename stays on one file system.
    # NOTE: a run killed with SIGKILL leaves this .partial- folder behind (it is never reused).
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        out, work = staging / "out", staging / "work"
        debs = download_packages(PACKAGES, work, log)
        versions = {pkg: unpack(deb, work / "root" / pkg) for pkg, deb in debs.items()}
        log("Converting documents to text")
        info = build_corpus(work / "root", out, versions, log)
        seconds = round(time.monotonic() - started, 1)
        manifest = {"format": 1, "packages": versions, **info, "seconds": seconds}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
        if target.exists():
            target.rename(staging / "old")
        out.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    for key, c in sorted(info["counts"].items()):
        log(f"  {key}: {c['files']} files, {c['chars']:,} chars, {c['bytes']:,} bytes")
    sft = info["sft_pairs"]
    log(f"  FAQ pairs: {sft['train']} for training, {sft['heldout']} held out")
    log(f"Corpus written to {target} in {time.monotonic() - started:.1f} s")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="corpus folder (default: %(default)s)",
                        default=default_cache_dir())
    parser.add_argument("--force", action="store_true", help="rebuild even if a corpus is cached")
    args = parser.parse_args(argv)
    # Turn SIGTERM into SystemExit so the finally block removes the partial folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        fetch_corpus(args.cache_dir, force=args.force)
    except CorpusFetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
