"""Smoke tests of `make demo` (experiments/demo.py) and the training benchmark's writer."""

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


def test_demo_writes_table_plot_and_resumes(tmp_path, capsys):
    demo = load("demo")
    args = ["--out", str(tmp_path), "--steps", "2", "--eval-every", "1", "--rules", "mean", "krum",
            "--processes", "1", "--quiet", "--batch-size", "8"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "| mean " in out and "| krum " in out and "Finished in" in out
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "summary.csv").read_text().startswith("rule,final accuracy")
    assert (tmp_path / "krum" / "checkpoint.pt").exists()
    args[args.index("--steps") + 1] = "3"
    assert demo.main(args) == 0  # one more step: continued, not redone
    assert "continued from earlier checkpoints: mean (step 2), krum (step 2)" in capsys.readouterr().out


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