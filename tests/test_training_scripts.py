"""Smoke test of the training benchmark's writer (`make demo` is tested in tests/test_demo.py)."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_writer_replaces_only_its_section(tmp_path):
    doc = load("bench_doc")
    path = tmp_path / "benchmarks.md"
    doc.write_section(path, "training", "first")
    assert path.read_text() == doc.HEADER + "\n<!-- training -->\nfirst\n<!-- /training -->\n"
    path.write_text("# Benchmarks\n\nrules table\n\n<!-- training -->\nfirst\n<!-- /training -->\n\n## Later\n")
    doc.write_section(path, "training", "second")
    assert path.read_text() == "# Benchmarks\n\nrules table\n\n<!-- training -->\nsecond\n<!-- /training -->\n\n## Later\n"
    doc.write_section(path, "aggregators", "rules")
    assert path.read_text().endswith("## Later\n\n<!-- aggregators -->\nrules\n<!-- /aggregators -->\n")