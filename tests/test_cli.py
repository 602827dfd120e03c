"""The command line: inspect, specs (parallel, bad files, strict) and stream."""

from __future__ import annotations

import json
import subprocess
import sys

from rootfiles import write_events

from mlaas4hep.cli import main
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec


def test_inspect_prints_tree_and_branches(shared_data, capsys):
    assert main(["inspect", str(shared_data / "uproot-Zmumu.root")]) == 0
    out = capsys.readouterr().out
    assert "events" in out and "2304 entries" in out and "19 numeric branches" in out
    assert "skipped non-numeric" in out and "Type" in out
    assert (
        main(["inspect", str(shared_data / "uproot-HZZ.root"), "--json", "--include", "Jet_P*"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 2421 and set(info["branches"]) == {"Jet_Px", "Jet_Py", "Jet_Pz"}


def test_specs_writes_the_dataset_spec(shared_data, tmp_path, capsys):
    output = tmp_path / "out" / "ds.json"
    files = [str(shared_data / "uproot-HZZ.root"), str(shared_data / "uproot-HZZ-lz4.root")]
    assert main(["specs", *files, "-o", str(output), "--workers", "2"]) == 0
    spec = DatasetSpec.from_json(output.read_text())
    assert spec.entries == 4842
    expected = DatasetSpec([compute_file_spec(f) for f in files])
    assert spec == expected
    assert "4842 events" in capsys.readouterr().out


def test_specs_reports_bad_files_and_strict_fails(shared_data, tmp_path, capsys):
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"garbage" * 1000)
    good = str(shared_data / "uproot-HZZ.root")
    output = tmp_path / "ds.json"
    assert main(["specs", good, str(bad), "-o", str(output)]) == 0
    assert DatasetSpec.from_json(output.read_text()).entries == 2421
    assert "bad.root" in capsys.readouterr().err
    strict_out = tmp_path / "strict.json"
    assert main(["specs", good, str(bad), "-o", str(strict_out), "--strict"]) == 1
    assert not strict_out.exists()
    assert main(["specs", str(bad), "-o", str(strict_out)]) == 1


def test_stream_dry_run(tmp_path, capsys):
    files = [str(write_events(tmp_path / f"f{i}.root", 500, seed=i)) for i in range(3)]
    spec = tmp_path / "ds.json"
    assert main(["specs", *files, "-o", str(spec)]) == 0
    assert (
        main(
            [
                "stream",
                *files,
                "--spec",
                str(spec),
                "--signal",
                "f0.root",
                "--chunk-size",
                "200",
                "--include",
                "Jet_*",
                "MET_pt",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "streamed 1500 events (500 signal)" in out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "inspect" in result.stdout and "specs" in result.stdout


def test_specs_update_reads_only_changed_files(tmp_path, capsys):
    files = [str(write_events(tmp_path / f"f{i}.root", 300, seed=i)) for i in range(3)]
    output = tmp_path / "ds.json"
    assert main(["specs", *files, "-o", str(output)]) == 0
    first = DatasetSpec.from_json(output.read_text())
    write_events(tmp_path / "f1.root", 500, seed=9)  # one file changes
    capsys.readouterr()
    assert main(["specs", *files, "-o", str(output), "--update"]) == 0
    assert "reused the specs of 2 unchanged file(s)" in capsys.readouterr().out
    second = DatasetSpec.from_json(output.read_text())
    assert second.entries == first.entries + 200
    assert second.files[files[0]] == first.files[files[0]]
    assert main(["specs", *files, "-o", str(output), "--update", "--include", "MET_pt"]) == 0
    assert "reused" not in capsys.readouterr().out  # another selection: everything is read
