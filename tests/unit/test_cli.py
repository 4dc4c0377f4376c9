"""The ``clinray`` CLI: discovery, help of every command, errors as messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clinray import cli


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "clinray.cli", *args], capture_output=True, text=True, **kw)


def test_help_lists_commands():
    result = _run("--help")
    assert result.returncode == 0
    for name in ("world", "tiny-model", "demo"):
        assert name in result.stdout


@pytest.mark.parametrize("command", sorted(cli.discover()))
def test_every_command_has_help(command):
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: clinray" in result.stdout
    assert cli.discover()[command][1], f"command {command} has no HELP line"


def test_tiny_model_reports_missing_corpus_cleanly(tmp_path):
    result = _run("tiny-model", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "no text files" in result.stderr and "Traceback" not in result.stderr
