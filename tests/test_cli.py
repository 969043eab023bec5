"""The `robustagg` command's dispatcher and `list` subcommand."""

import subprocess
import sys

import robustagg as ra
from robustagg import cli


def test_list_prints_every_family(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for family in ("rules", "attacks", "faults", "poisoning", "participation", "datasets", "models"):
        assert f"{family}: " in out
    assert "trimmed-mean" in out and "alie" in out and "mnist-5k" in out


def test_list_one_family(capsys):
    assert cli.main(["list", "rules"]) == 0
    assert capsys.readouterr().out.strip() == "rules: " + ", ".join(ra.available())


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: robustagg" in capsys.readouterr().out


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "robustagg.cli", "list", "models"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("models: ")
