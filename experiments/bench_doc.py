"""Write one benchmark's section of ``docs/benchmarks.md`` atomically, leaving the others alone.

Each benchmark script owns the text between ``<!-- NAME -->`` and ``<!-- /NAME -->``;
sections missing from the file are appended in the order they are first written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustagg._io import atomic_write_text  # noqa: E402

HEADER = "# Benchmarks\n\nEvery number here was measured by `make bench` (scripts in `experiments/`).\n"


def write_section(path: Path, name: str, text: str) -> None:
    path = Path(path)
    old = path.read_text() if path.exists() else HEADER
    block = f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, new)
