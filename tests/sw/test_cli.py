"""The CLI: its verbs run and bad input is one clear line, not a traceback."""

import os

import pytest

from nmsat.sw.cli import main
from nmsat.sw.digits import parse_pattern


def test_train_digits_runs_and_writes_table(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main(["train-digits", "--patterns", "dense,2:8", "--seeds", "1", "--epochs", "2", "--quiet",
                 "-o", str(out)]) == 0
    table = out.read_text()
    assert "| dense |" in table and "| 2:8 |" in table
    assert table.splitlines()[0] in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--patterns", "2:9:1"], "pattern must be 'dense' or 'N:M'"),
    (["--patterns", "9:8"], "1 <= n <= m"),
    (["--seeds", "0"], "--seeds and --epochs must be >= 1"),
    (["--patterns", ""], "--patterns is empty"),
    (["--patterns", " , "], "--patterns is empty"),
    (["--patterns", "1:100000"], "M must be at most 64"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["-o", "/nonexistent-folder/table.md"], "folder /nonexistent-folder does not exist"),
])
def test_train_digits_bad_input(args, message, capsys):
    assert main(["train-digits", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parse_pattern():
    assert parse_pattern("dense") is None and parse_pattern(" 2:8") == (2, 8)


def test_output_files_are_checked_before_the_work_starts(tmp_path, capsys, monkeypatch):
    import nmsat.sw.digits as digits

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(digits, "sweep", no_training)
    existing = tmp_path / "table.md"
    existing.write_text("keep me\n")
    assert main(["train-digits", "--quiet", "-o", str(existing)]) == 2
    assert "exists; pass --force to overwrite it" in capsys.readouterr().err
    assert existing.read_text() == "keep me\n"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anyway
            assert main(["train-digits", "--quiet", "-o", str(locked / "t.md")]) == 2
            assert "permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    assert main(["train-digits", "--quiet", "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_write_failure_is_one_line(tmp_path, capsys, monkeypatch):
    """A write that fails after the check (a full disk, a folder removed meanwhile) is a clear error too."""
    import pathlib

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pathlib.Path, "write_text", refuse)
    assert main(["verilog", "--preset", "tiny", "-o", str(tmp_path / "core.v")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err and "Traceback" not in err


def test_train_digits_uses_the_thread_count_asked_for(tmp_path, monkeypatch):
    import torch

    import nmsat.sw.digits as digits

    seen = {}
    monkeypatch.setattr(digits, "sweep", lambda *a, **k: seen.setdefault("threads", torch.get_num_threads()) and [])
    monkeypatch.setattr(digits, "format_results", lambda results, seeds: "| table |")
    before = torch.get_num_threads()
    try:
        assert main(["train-digits", "--quiet", "--threads", "2"]) == 0
        assert seen["threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "nmsat", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train-digits" in out.stdout
