"""The CLI in a toolchain: one JSON document on stdout (errors too), exit statuses, CI
gates, missing extras named, records that follow their published schema."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from prunepass.cli import main
from prunepass.errors import MissingExtra, need

ROOT = Path(__file__).parent.parent
SCHEMA = json.loads((ROOT / "docs" / "record.schema.json").read_text())
SMALL = ["torchvision:resnet18", "--input-shape", "1,3,32,32"]


def cli(*argv: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "prunepass.cli", *argv], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_groups_json_is_one_document(capsys):
    assert main(["groups", *SMALL, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["groups"]) == 13 and data["barriers"] == []
    assert data["groups"][0]["producers"][0] == "conv1.weight[0]"


def test_a_failing_run_with_json_writes_an_error_object_and_exits_2(capsys):
    assert main(["run", *SMALL, "-p", "prune-channels<ratio=1.5>", "--json"]) == 2
    out = capsys.readouterr()
    err = json.loads(out.out)["error"]
    assert err["type"] == "PipelineError" and err["exit_status"] == 2
    assert "ratio" in err["message"] and out.err.startswith("prunepass: error:")


def test_bench_json_and_the_min_speedup_gate(capsys):
    argv = ["bench", *SMALL, "-p", "prune-channels<ratio=0.5>,dce", "--backends", "ort",
            "--rounds", "2", "--repeats", "2", "--threads", "1", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert {(r["backend"], r["variant"]) for r in data["rows"]} == {("ort", "dense"),
                                                                  ("ort", "pruned")}
    assert data["speedup"]["ort"]["median"] > 0
    assert main(argv + ["--min-speedup", "1000"]) == 4  # a failed check, not a usage error
    out = capsys.readouterr().out
    assert out.count('"error"') == 1 and "below --min-speedup 1000" in out


def test_calibrate_refuses_fewer_runs_than_coefficients(capsys, tmp_path):
    assert main(["calibrate", *SMALL, "-o", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "3 runs" in err and "10 coefficients" in err and "--force" in err
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("module,extra", [("optuna", "search"), ("matplotlib", "plot"),
                                          ("sklearn", "demo"), ("pynvml", "energy")])
def test_a_missing_optional_package_names_its_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(MissingExtra, match=rf"pip install 'prunepass\[{extra}\]'"):
        need(module, extra, "this")


def test_missing_matplotlib_is_one_line_on_the_cli(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["run", *SMALL, "-p", "dce", "--profile", "x86-epyc", "-q",
                 "--plot", str(tmp_path / "e.png")])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("pip install 'prunepass[plot]'")


def test_records_follow_the_published_schema(tmp_path):
    code, out, err = cli("run", *SMALL, "-p", "prune-channels<ratio=0.5,round-to=8>,dce",
                         "--report", str(tmp_path / "r.json"), "--json", "-q")
    assert code == 0, err
    stdout_record = json.loads(out)
    written = stdout_record.pop("written")
    assert written == {"report": str(tmp_path / "r.json")}
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == stdout_record
    jsonschema.validate(saved, SCHEMA)
    assert saved["inputs"] == [{"name": "[0]", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert saved["versions"]["torch"] and "prunepass" in saved["versions"]
    assert saved["given"] == "prune-channels<ratio=0.5,round-to=8>,dce"
    assert "select-channels<ratio=0.5,scope=local,group-ratios=[]>" in saved["pipeline"]
    old = json.loads((ROOT / "tests" / "fixtures" / "record_before_plans.json").read_text())
    jsonschema.validate(old, SCHEMA)
    del saved["frontend"]
    with pytest.raises(jsonschema.ValidationError, match="frontend"):
        jsonschema.validate(saved, SCHEMA)
