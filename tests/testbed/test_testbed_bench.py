"""`dualpath bench isolation`: flags are validated before anything is built, and a short run
writes the JSON the README documents."""

from __future__ import annotations

import json

import pytest

from dualpath.cli.main import main


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--phase-s", "0.1"], ["--rate", "none"]])
def test_bad_flags_are_one_line_errors(argv, capsys) -> None:
    assert main(["bench", "isolation", *argv]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_short_run_writes_the_documented_json(netns_ok, tmp_path, capsys) -> None:
    out = tmp_path / "isolation.json"
    rc = main(["bench", "isolation", "--rounds", "1", "--phase-s", "0.8", "--rate-bytes", "3MB",
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    for prefix in ("", "kv_", "unmarked_"):
        for key in ("idle_p50_s", "idle_p99_s", "loaded_p50_s", "loaded_p99_s", "p99_ratio"):
            assert isinstance(result[prefix + key], float), prefix + key
    assert result["testbed"] == "netns" and result["benchmark"] == "isolation"
    assert result["link_rate_bytes_s"] == 12.5e6 and "machine" in result
    assert 0.85 < result["rate_wire_over_rate"] < 1.15
    assert "model" in capsys.readouterr().out  # the table
