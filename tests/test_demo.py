"""`make demo` (experiments/demo.py) at tiny scale: the rule x attack table, the heat map and
the curves it writes, that the heat map shows the table, and resuming."""

import csv
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "experiments" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed_table(out):
    """The markdown table the demo prints: header labels and {rule: [cells]}."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header, rows


def test_demo_writes_table_heatmap_and_resumes(tmp_path, capsys):
    demo = load_demo()
    rules, attacks = ["mean", "krum"], ["none", "reverse"]
    args = ["--out", str(tmp_path), "--steps", "2", "--eval-every", "1", "--rules", *rules, "--attacks", *attacks,
            "--processes", "1", "--quiet", "--batch-size", "8"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    header, printed = printed_table(out)
    labels = [demo.ATTACKS[a][1] for a in attacks]
    assert header == ["rule", *labels] and list(printed) == rules
    assert "Finished in" in out

    # the table is the last evaluation of each run's own metrics.csv
    final = {}
    for attack in attacks:
        for rule in rules:
            with open(tmp_path / attack / demo.slug(rule) / "metrics.csv") as fh:
                final[rule, attack] = float(list(csv.DictReader(fh))[-1]["accuracy"])
            assert (tmp_path / attack / demo.slug(rule) / "checkpoint.pt").exists()
    with open(tmp_path / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [row["rule"] for row in summary] == rules
    table = [[float(row[label]) for label in labels] for row in summary]
    assert table == [[final[rule, attack] for attack in attacks] for rule in rules]
    for rule, values in zip(rules, table):
        assert [cell.rstrip("*") for cell in printed[rule]] == [f"{v:.3f}" for v in values]
    with open(tmp_path / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert [(r["attack"], r["rule"]) for r in runs] == [(a, r) for a in attacks for r in rules]

    # the heat map: a PNG whose embedded numbers and drawn cells are the table
    png = Image.open(tmp_path / "heatmap.png")
    assert png.format == "PNG"
    stored = json.loads(png.text[demo.PNG_KEY])
    assert stored == {"rules": rules, "attacks": attacks, "final accuracy": table}
    fig = demo.heatmap_figure(table, rules, attacks, "title")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), np.array(table))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [f"{v:.3f}" for row in table for v in row]
    assert Image.open(tmp_path / "accuracy.png").format == "PNG"

    # one more step: every run continues from its checkpoint
    args[args.index("--steps") + 1] = "3"
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "continued from earlier checkpoints: none/mean (step 2), none/krum (step 2), reverse/mean (step 2), " \
           "reverse/krum (step 2)" in out
    with open(tmp_path / "none" / "krum" / "metrics.csv") as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == ["1", "2", "3"]


def test_heatmap_marks_diverged_runs():
    demo = load_demo()
    fig = demo.heatmap_figure([[0.1, 0.9]], ["mean"], ["reverse", "alie"], "t", {("mean", "reverse"): 1})
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.100\n(diverged)", "0.900"]
    table = demo.markdown_table([[0.1, 0.9]], ["mean"], ["reverse", "alie"], {("mean", "reverse"): 1})
    assert re.search(r"\| mean \| 0\.100\* \| 0\.900 \|", table)


def test_demo_bad_arguments(tmp_path, capsys):
    demo = load_demo()
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path), "--attacks", "sign-flip"])
    assert exc.value.code == 2 and "invalid choice: 'sign-flip'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path), "--steps", "0"])
    assert exc.value.code == 2 and "--steps must be at least 1, got 0" in capsys.readouterr().err
