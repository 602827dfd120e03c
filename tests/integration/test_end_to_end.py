"""End to end: what ``make demo`` does, on a smaller sample, then continuous training.

One local stack for the module (moto, XRootD, Ray head, Terraform, the function runtime,
``bentoml serve``). Files uploaded to the data bucket become, by events alone, a
DatasetSpec, a retraining job, a model published and promoted in the shared registry in
the models bucket (as deployed: the job's and the service's stores are their own, so the
bucket is the only way a version reaches the service), which the service serves;
a second signal file retrains and switches the served version under load with no failed
request; a retraining that fails leaves the served model alone and shows in
``mlaas4hep jobs``; at the end nothing the stack started is left running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlaas4hep.cli import main as cli
from mlaas4hep.local.demo import SIGNAL, Demo, DemoOptions
from mlaas4hep.local.stack import pid_alive
from mlaas4hep.pipeline.jobs_api import list_jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp("e2e")
    options = DemoOptions(
        events=30_000,
        heldout_events=6_000,
        epochs=1,
        continuous=True,
        margin=0.05,
        data_dir=root / "data",
        out_dir=root / "out",
        state_dir=root / "stack",
    )
    run = Demo(options)
    try:
        run.summary = run.run()
        yield run
    finally:
        record = run.stack.record(run.stack.outputs) if run.stack and run.stack.bento else None
        run.stop()
        if record is not None:  # everything the stack started is gone
            for name in ("moto", "xrootd", "ray", "runtime", "bento"):
                assert not pid_alive(record[name]["pid"]), f"{name} still runs"


def test_events_alone_train_promote_and_serve(demo: Demo) -> None:
    summary = demo.summary
    assert summary["heldout_auc"] > 0.7
    assert abs(summary["heldout_auc"] - summary["job_test_auc"]) < 0.05
    registry_url = demo.stack.registry_url
    assert registry_url == f"s3://{demo.buckets['models']}/registry/"
    assert demo.stack.registry().resolve("tth:production") == demo.served_tag()
    # the promotion went through the bucket: the job said where, the service was told the same
    environment = demo.stack.outputs["functions"]["retrain"]["environment"]
    env_vars = json.loads(environment["MLAAS4HEP_RETRAIN_RUNTIME_ENV"])["env_vars"]
    assert env_vars["MLAAS4HEP_REGISTRY_URL"] == registry_url
    assert env_vars["BENTOML_HOME"] != str(demo.stack.bentoml_home)  # a store of its own
    history = json.loads(
        demo.s3_client()
        .get_object(Bucket=demo.buckets["models"], Key="registry/aliases.json")["Body"]
        .read()
    )["history"]
    assert [entry["tag"] for entry in history][:1] == [summary["model"]]
    assert history[0]["by"].startswith("retraining of tth")
    assert {Path(p).name for p in summary["plots"]} >= {"roc.png", "loss.png"}


def test_new_signal_file_retrains_once_and_switches_without_failures(demo: Demo) -> None:
    continuous = demo.summary["continuous"]
    assert continuous["new_files"], "the new version's lineage does not name the new file"
    assert continuous["failed_requests"] == 0
    assert continuous["requests_during_switch"] > 20
    jobs = list_jobs(demo.stack.ray.address, dataset="tth")
    assert len(jobs) == 2 and all(job.status == "SUCCEEDED" for job in jobs)
    registry = demo.stack.registry()
    registry.sync()
    assert len(registry.list(name="tth")) == 2
    decision = continuous["decision"]
    served = demo.served_tag()
    assert served == (decision["candidate"] if decision["promote"] else decision["current"])


def test_failed_retraining_keeps_serving_and_is_visible(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = demo.s3_client()
    served = demo.served_tag()
    recipe = demo.options.recipe()
    recipe["dataset"]["include"] = ["Jet_pt", "NoSuchBranch"]
    models, data = demo.buckets["models"], demo.buckets["data"]
    s3.put_object(Bucket=models, Key="tth/train.yaml", Body=json.dumps(recipe).encode())
    signal = next(p for p in (demo.options.data_dir / "extra").glob("*.root") if p.match(SIGNAL))
    s3.upload_file(str(signal), data, "datasets/tth/ttH_signal_3.root")
    with pytest.raises(Exception, match="FAILED"):
        demo.wait_for_retraining(demo.summary["continuous"]["job"])
    assert demo.served_tag() == served
    address = demo.stack.ray.address
    failed = [job for job in list_jobs(address, dataset="tth") if job.status == "FAILED"]
    assert len(failed) == 1
    assert cli(["jobs", "list", "--address", address]) == 0
    assert "FAILED" in capsys.readouterr().out
    assert cli(["jobs", "logs", failed[0].submission_id, "--address", address]) == 0
    assert "NoSuchBranch" in capsys.readouterr().out
