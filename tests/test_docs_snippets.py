"""Every ```python block of README.md and docs/*.md runs as written.

Conventions (also in docs/dev.md, "Code in the docs"):

* each block runs in a fresh namespace, in a fresh temporary working directory that holds a
  link ``experiments`` to the repository's ``experiments/`` folder (so the example configs
  resolve as they do from a clone, and anything a block writes lands in the temporary folder);
* an HTML comment on the line just before the opening fence changes that:

  - ``<!-- snippet: skip (reason) -->``: the block is not run (it needs torchrun, a download,
    data the reader supplies, or minutes of training); the reason is required and shows in
    the test report;
  - ``<!-- snippet: continue -->``: the block continues the previous block of the same page:
    the blocks of its chain run first, in one namespace;

* a block gets ``BLOCK_SECONDS`` seconds; one that takes longer fails (make it smaller or skip it).

The tests are named by file and line of the opening fence (``docs/index.md:9``), so a failure
says which block to fix.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK_SECONDS = 30
MARKER = re.compile(r"^<!--\s*snippet:\s*(?P<kind>skip|continue)\b\s*(?P<rest>.*?)\s*-->\s*$")


class Block(NamedTuple):
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    code: str
    skip: Optional[str]  # the reason, when marked skip
    continues: bool

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


FENCE = re.compile(r"^(?P<indent> *)```python\s*$")


def extract(path: Path) -> List[Block]:
    """The ```python blocks of one Markdown file (also indented ones, in list items), with
    their markers."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            start, indent = i, len(fence["indent"])
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"{rel}:{start + 1}: a ```python block is never closed")
            skip = None
            marker = MARKER.match(lines[start - 1].strip()) if start else None
            if marker and marker["kind"] == "skip":
                skip = marker["rest"].strip()
                if not (skip.startswith("(") and skip.endswith(")") and skip[1:-1].strip()):
                    raise ValueError(f"{rel}:{start}: a skip marker needs a reason: <!-- snippet: skip (why) -->")
                skip = skip[1:-1].strip()
            continues = bool(marker and marker["kind"] == "continue")
            blocks.append(Block(rel, start + 1, "\n".join(body) + "\n", skip, continues))
        i += 1
    return blocks


def all_blocks() -> List[Block]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [block for path in files for block in extract(path)]


BLOCKS = all_blocks()

# Blocks that do not run yet, keyed by (page, first line of code): each runs as a strict xfail
# with its reason, so a fixed block fails here until its entry is removed. Empty: every block
# runs or carries a ``<!-- snippet: skip (reason) -->`` marker.
KNOWN: dict = {}


def first_line(block: Block) -> str:
    return next((line.strip() for line in block.code.splitlines() if line.strip()), "")


def params():
    out = []
    for block in BLOCKS:
        known = KNOWN.get((block.path, first_line(block)))
        marks = [pytest.mark.xfail(strict=True, run=known[1], reason=known[0])] if known and block.skip is None else []
        out.append(pytest.param(block, marks=marks, id=block.id))
    return out


def chain(block: Block) -> List[Block]:
    """The blocks to run for ``block``: those it continues, then itself."""
    page = [b for b in BLOCKS if b.path == block.path]
    k = page.index(block)
    start = k
    while page[start].continues and start > 0:
        start -= 1
    return page[start:k + 1]


class BlockTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    def handler(signum, frame):
        raise BlockTimeout(f"{what} took longer than {seconds} s: make it smaller or mark it "
                           "<!-- snippet: skip (reason) -->")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("block", params())
def test_snippet_runs(block, tmp_path, monkeypatch):
    if block.skip is not None:
        pytest.skip(f"marked in the doc: {block.skip}")
    (tmp_path / "experiments").symlink_to(ROOT / "experiments", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {"__name__": "__snippet__"}
    output = io.StringIO()
    for part in chain(block):
        where = f"the block at {part.id}" + ("" if part is block else f" (continued by {block.id})")
        code = compile(part.code, part.id, "exec")
        with time_limit(BLOCK_SECONDS, where), contextlib.redirect_stdout(output), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            failure = None
            try:
                exec(code, namespace)
            except BlockTimeout:
                raise
            except BaseException as exc:  # SystemExit too: report it as the block's failure
                failure = f"{where} raised {type(exc).__name__}: {exc}"
        if failure is not None:
            pytest.fail(failure, pytrace=False)


def test_markers_are_parsed(tmp_path, monkeypatch):
    doc = tmp_path / "page.md"
    doc.write_text("text\n```python\na = 1\n```\n<!-- snippet: continue -->\n```python\nb = a + 1\n```\n"
                   "<!-- snippet: skip (needs torchrun) -->\n```python\nimport missing\n```\n```bash\nls\n```\n"
                   "1. item\n   <!-- snippet: skip (a sketch) -->\n   ```python\n   def f():\n       pass\n   ```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    blocks = extract(doc)
    assert [(b.line, b.code, b.skip, b.continues) for b in blocks] == [
        (2, "a = 1\n", None, False), (6, "b = a + 1\n", None, True), (10, "import missing\n", "needs torchrun", False),
        (18, "def f():\n    pass\n", "a sketch", False)]
    doc.write_text("<!-- snippet: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match=r"page.md:1: a skip marker needs a reason"):
        extract(doc)


def test_a_failing_block_is_reported_with_its_place(tmp_path, monkeypatch):
    block = Block("docs/page.md", 7, "x = 1\nraise KeyError('missing')\n", None, False)
    monkeypatch.setattr(sys.modules[__name__], "BLOCKS", [block])
    with pytest.raises(pytest.fail.Exception, match=r"the block at docs/page.md:7 raised KeyError: 'missing'"):
        test_snippet_runs(block, tmp_path, monkeypatch)
    with pytest.raises(BlockTimeout, match=r"docs/page.md:7 took longer than 1 s"):
        with time_limit(1, "the block at docs/page.md:7"):
            while True:
                pass
