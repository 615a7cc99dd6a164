"""`nmsat verilog` writes the core's Verilog and refuses unknown presets."""

from nmsat.hw.config import SATConfig
from nmsat.sw.cli import main


def test_verilog_command_writes_the_core(tmp_path, capsys):
    out = tmp_path / "core.v"
    assert main(["verilog", "--preset", "tiny", "-o", str(out)]) == 0
    text = out.read_text()
    assert "module nmsat_core" in text and "mem__araddr" in text and "csr__awaddr" in text
    err = capsys.readouterr().err
    assert f"{SATConfig.tiny().hash32:#010x}" in err
    assert "generating the core for preset 'tiny'" in err and "generating Verilog: done in" in err
    assert main(["verilog", "--preset", "tiny", "-o", str(out)]) == 2  # no silent overwrite
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["verilog", "--preset", "tiny", "-o", str(out), "--force"]) == 0


def test_verilog_command_bad_preset(capsys):
    assert main(["verilog", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
