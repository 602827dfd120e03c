"""Checkpoints kept in S3 (a real moto server) by the one-worker actor's session.

A checkpoint is complete when its ``state.json`` is there (uploaded last): a fresh
session resumes from the newest complete one, never from one cut short, and the store
keeps as many as the session does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlaas4hep.training.session import StoredSession
from mlaas4hep.training.storage import run_storage

pytestmark = pytest.mark.integration


def checkpoint(directory: Path, unit: int) -> Path:
    """What a loop writes for a unit: weights in a subdirectory, then its state."""
    (directory / "weights").mkdir(parents=True)
    (directory / "weights" / "model.bin").write_bytes(bytes([unit]) * 1000)
    (directory / "state.json").write_text(json.dumps({"next_unit": unit + 1}))
    return directory


def test_checkpoints_in_s3_resume_from_the_newest_complete_one(moto_server, tmp_path) -> None:
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="runs")
    path, filesystem = run_storage("s3://runs/team/")
    assert path == "runs/team/checkpoints"
    session = StoredSession(filesystem, f"{path}/run-1", keep=2)
    with session.last_checkpoint() as directory:
        assert directory is None  # nothing stored yet: a fresh start
    for unit in range(3):
        session.report({"unit": unit}, checkpoint(tmp_path / f"u{unit}", unit), f"unit-{unit:05d}")
    objects = s3.list_objects_v2(Bucket="runs")["Contents"]
    keys = {o["Key"] for o in objects if not o["Key"].endswith("/")}  # pyarrow's dir markers
    assert keys == {
        f"team/checkpoints/run-1/unit-{u:05d}/{name}"
        for u in (1, 2)
        for name in ("state.json", "weights/model.bin")
    }  # unit 0 pruned: two kept
    assert session.location("unit-00002") == "s3://runs/team/checkpoints/run-1/unit-00002"
    # an upload cut short before its state: not a checkpoint to resume from
    cut_short = "team/checkpoints/run-1/unit-00003/weights/model.bin"
    s3.put_object(Bucket="runs", Key=cut_short, Body=b"")
    resumed = StoredSession(filesystem, f"{path}/run-1")
    assert resumed.stored() == ["unit-00001", "unit-00002"]
    with resumed.last_checkpoint() as directory:
        assert directory is not None and directory.name == "unit-00002"
        assert json.loads((directory / "state.json").read_text()) == {"next_unit": 3}
        assert (directory / "weights" / "model.bin").read_bytes() == bytes([2]) * 1000
    with resumed.final_checkpoint() as directory:
        assert directory.name == "unit-00002"
    assert not resumed.directory.exists()  # the local mirror goes; the store keeps them
    assert resumed.stored() == ["unit-00001", "unit-00002"]
    assert StoredSession(filesystem, f"{path}/run-2").stored() == []
