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
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlaas4hep.cli import main as cli
from mlaas4hep.local.demo import SIGNAL, Demo, DemoOptions
from mlaas4hep.local.stack import pid_alive
from mlaas4hep.pipeline.jobs_api import TOKEN_FILE, JobsError, list_jobs
from mlaas4hep.training.result import job_result

PROJECT_ROOT = Path(__file__).resolve().parents[2]

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
    jobs = list_jobs(demo.stack.ray.address, dataset="tth", token=demo.stack.ray.auth_token)
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
    address, token = demo.stack.ray.address, demo.stack.ray.auth_token
    jobs = list_jobs(address, dataset="tth", token=token)
    failed = [job for job in jobs if job.status == "FAILED"]
    assert len(failed) == 1
    ray = ["--address", address, "--token-file", str(demo.stack.state_dir / TOKEN_FILE)]
    assert cli(["jobs", "list", *ray]) == 0
    assert "FAILED" in capsys.readouterr().out
    assert cli(["jobs", "logs", failed[0].submission_id, *ray]) == 0
    assert "NoSuchBranch" in capsys.readouterr().out
    # the stack's Ray runs with token authentication: no token, no jobs
    with pytest.raises(JobsError, match="wants a token"):
        list_jobs(address, token="")


def readme_block(after: str) -> str:
    """The README's first ``bash`` block after the line that starts with ``after``."""
    lines = (PROJECT_ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    begin = next(i for i in range(start, len(lines)) if lines[i] == "```bash") + 1
    end = next(i for i in range(begin, len(lines)) if lines[i] == "```")
    return "\n".join(lines[begin:end])


def test_the_readmes_ray_job_submit_works_from_a_fresh_shell(demo: Demo, tmp_path: Path) -> None:
    """The README's ``ray job submit`` for the local stack, run as written from a new
    shell with nothing activated and a bare PATH, in a checkout (the tracked files, the
    virtualenv, the stack's state: its record and Ray token): the job is let in with the
    token, runs with the project's environment whatever the caller's PATH (the head's
    doing) and reads the stack's bucket."""
    command = readme_block("On the local stack, from a new shell")
    assert ".venv/bin/ray job submit" in command
    checkout = tmp_path / "checkout"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (PROJECT_ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, checkout / name)
    (checkout / ".venv").symlink_to(Path(sys.executable).parents[1])
    (checkout / ".stack").symlink_to(demo.stack.state_dir)
    recipe = demo.options.recipe()
    recipe["dataset"]["files"] = [f"s3://{demo.buckets['data']}/datasets/tth/"]
    recipe["training"]["epochs"] = 1
    recipe["scaling"] = {"num_workers": 1}
    recipe["output"] = {
        "location": f"s3://{demo.buckets['models']}/readme-runs",
        "name": "readme",
        "bentoml_store": False,
    }
    (checkout / "train.yaml").write_text(json.dumps(recipe))
    home = tmp_path / "home"
    home.mkdir()
    fresh = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    run = subprocess.run(
        ["bash", "-c", command], cwd=checkout, env=fresh, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ModuleNotFoundError" not in run.stdout + run.stderr
    result = job_result(run.stdout)
    assert result and result["test_auc"] > 0.6, run.stdout[-3000:]
    written = demo.s3_client().list_objects_v2(Bucket=demo.buckets["models"], Prefix="readme-runs/")
    assert any(result["run_name"] in o["Key"] for o in written.get("Contents", [])), written
