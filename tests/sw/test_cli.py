"""The CLI: its verbs run and bad input is one clear line, not a traceback."""

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
])
def test_train_digits_bad_input(args, message, capsys):
    assert main(["train-digits", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parse_pattern():
    assert parse_pattern("dense") is None and parse_pattern(" 2:8") == (2, 8)
