"""The Terraform-provisioned event pipeline, applied for real to a local moto server.

One apply is shared by the whole module (it is the slow part): the tests run in file
order, from "the plan has no drift" to "destroy leaves nothing". Between them, files
are uploaded to the data bucket and everything else happens through S3 notifications, SQS and
the local runtime calling the handlers that Terraform declared; training jobs go to a
real local Ray head.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from rootfiles import write_events
from terraform_roots import apply_on_moto

from functions.local_runtime import LocalRuntime
from mlaas4hep.cli import main as cli_main
from mlaas4hep.io.tree import open_tree
from mlaas4hep.local.project import infra_dir
from mlaas4hep.local.stack import LOCAL_STACK_VARS, RayHead
from mlaas4hep.local.terraform import Terraform, TerraformError
from mlaas4hep.pipeline.config import PipelineConfig
from mlaas4hep.pipeline.merge_step import merge_into_dataset, read_dataset_spec
from mlaas4hep.pipeline.spec_step import read_quarantine
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

GOOD_FILES = ["uproot-HZZ.root", "uproot-Zmumu.root", "uproot-HZZ-lz4.root"]
# Short visibility timeouts so that a failing message reaches its DLQ within seconds.
FUNCTIONS = {
    "spec_file": {"timeout": 4, "visibility_timeout_seconds": 4, "max_receive_count": 2},
    "merge_specs": {"timeout": 10, "batch_size": 10, "maximum_batching_window_in_seconds": 1},
    "retrain": {"timeout": 10, "batch_size": 10, "maximum_concurrency": 1},
}
DEBOUNCE_SECONDS = 3
#: The user's own runtime_env of the retraining jobs: kept beside the registry Terraform adds.
#: The retraining job of these tests: it succeeds at once, except for a dataset whose name
#: starts with "flaky", whose first attempt fails (exit status 1, not the job's
#: configuration status 2), as a node lost or a spot instance reclaimed would.
ENTRYPOINT = (
    'python -c "import pathlib, sys; m = pathlib.Path(sys.argv[2], sys.argv[1]); '
    "first = not m.exists(); m.touch(); sys.exit(int(first and sys.argv[1].startswith('flaky')))\""
    " {dataset} MARKERS"
)
RUNTIME_ENV = {"env_vars": {"MLAAS4HEP_PIPELINE_TEST": "1"}}


def wait_for(predicate, timeout: float, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory):
    subprocess.run([sys.executable, "-m", "mlaas4hep.local.lambda_package"], check=True)
    markers = tmp_path_factory.mktemp("job-markers")
    token = secrets.token_urlsafe(24)  # Ray's token authentication, as deployed
    ray = RayHead(auth_token=token).start()
    state_dir = tmp_path_factory.mktemp("terraform")
    tf = Terraform(state_dir=state_dir, env=moto_server.env())
    # The pipeline without the ECS/ALB serving deployment (only its image repository):
    # tests/integration/test_infra_serving.py applies, re-plans and destroys that one.
    overrides = state_dir / "pipeline.tfvars.json"
    overrides.write_text(json.dumps(LOCAL_STACK_VARS))
    var_files = [infra_dir() / "envs" / "local.tfvars", overrides]
    variables = {
        "environment": "it",
        "aws_endpoint_url": moto_server.endpoint_url,
        "ray_address": ray.address,
        "retrain_entrypoint": ENTRYPOINT.replace("MARKERS", str(markers)),
        "retrain_debounce_seconds": DEBOUNCE_SECONDS,
        "retrain_retry_seconds": 2,  # the job is watched every 2 s
        "functions": FUNCTIONS,
        "retrain_runtime_env": RUNTIME_ENV,
    }
    runtime = None
    destroyed = []
    try:
        tf.init()
        apply_on_moto(tf, moto_server, var_files, variables)
        outputs = tf.output()
        # the cluster's token, put in the secret Terraform created (as the README says)
        moto_server.client("secretsmanager").put_secret_value(
            SecretId=outputs["ray_token_secret_arn"], SecretString=token
        )
        runtime = LocalRuntime(outputs["functions"]).start()
        config = PipelineConfig.from_env(outputs["functions"]["merge_specs"]["environment"])
        yield SimpleNamespace(
            tf=tf,
            var_files=var_files,
            variables=variables,
            outputs=outputs,
            config=config,
            runtime=runtime,
            ray=ray,
            token=token,
            entrypoint=ENTRYPOINT.replace("MARKERS", str(markers)),
            s3=moto_server.client("s3"),
            sqs=moto_server.client("sqs"),
            destroyed=destroyed,
        )
    finally:
        if runtime is not None:
            runtime.stop()
        if not destroyed:
            tf.destroy(var_files, variables)
        ray.stop()


def upload(stack, source: Path, key: str) -> str:
    stack.s3.upload_file(str(source), stack.config.data_bucket, key)
    return f"s3://{stack.config.data_bucket}/{key}"


def dataset_files(stack, dataset: str) -> int:
    return len(read_dataset_spec(stack.config, dataset)[0].files)


def queue_depth(stack, url: str) -> int:
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",  # received, being handled
            "ApproximateNumberOfMessagesDelayed",  # e.g. a debounce recheck
        ],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def pipeline_idle(stack) -> bool:
    """No message in any function's queue: nothing is left that could write a spec or submit
    a job. The queues are read in the order work flows through them (a handler sends its
    message downstream before its own is deleted), so work moving on is not missed."""
    functions = stack.outputs["functions"]
    return all(
        queue_depth(stack, functions[name]["queue_url"]) == 0
        for name in ("spec_file", "merge_specs", "retrain")
    )


def test_outputs_wire_every_function_to_its_queue(stack, moto_server):
    functions = stack.outputs["functions"]
    assert {name: fn["handler"] for name, fn in functions.items()} == {
        "spec_file": "functions.spec_file.handler",
        "merge_specs": "functions.merge_specs.handler",
        "retrain": "functions.retrain.handler",
    }
    for fn in functions.values():
        assert fn["queue_url"] != fn["dlq_url"]
        assert fn["function_response_types"] == ["ReportBatchItemFailures"]
        redrive = stack.sqs.get_queue_attributes(
            QueueUrl=fn["queue_url"], AttributeNames=["RedrivePolicy"]
        )["Attributes"]["RedrivePolicy"]
        assert json.loads(redrive)["maxReceiveCount"] == fn["max_receive_count"]
    # every dead-letter queue has an alarm that goes off at its first message
    cloudwatch = moto_server.client("cloudwatch")
    names = [fn["dlq_alarm_name"] for fn in functions.values()]
    alarms = {
        a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
    }
    assert set(alarms) == set(names)
    for fn in functions.values():
        alarm = alarms[fn["dlq_alarm_name"]]
        dlq = fn["dlq_url"].rsplit("/", 1)[1]
        assert alarm["Namespace"] == "AWS/SQS"
        assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": dlq}]
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    # the spec function knows its last delivery: the queue's own count
    spec_file = functions["spec_file"]
    assert spec_file["environment"]["MLAAS4HEP_MAX_RECEIVE_COUNT"] == str(
        spec_file["max_receive_count"]
    )


def retrain_runtime_env(environment: dict[str, str]) -> dict:
    return json.loads(environment["MLAAS4HEP_RETRAIN_RUNTIME_ENV"])


def test_retraining_jobs_write_to_the_registry_the_replicas_follow(stack):
    registry = stack.outputs["registry_url"]
    assert registry == f"s3://{stack.outputs['buckets']['models']}/registry/"
    assert stack.outputs["serving"]["models_url"] == registry  # the tasks' MLAAS4HEP_MODELS_BUCKET
    runtime_env = retrain_runtime_env(stack.outputs["functions"]["retrain"]["environment"])
    staging_cache = f"s3://{stack.outputs['buckets']['cache']}/staged/"
    assert runtime_env["env_vars"] == {
        "MLAAS4HEP_REGISTRY_URL": registry,
        "MLAAS4HEP_STAGING_CACHE": staging_cache,  # a recipe's staging without a cache
        **RUNTIME_ENV["env_vars"],
    }
    # A registry the user names in retrain_runtime_env wins; the rest of it is kept.
    own = {
        "working_dir": "s3://code/mlaas4hep.zip",
        "env_vars": {"MLAAS4HEP_REGISTRY_URL": "s3://elsewhere/registry/", "BENTOML_HOME": "/b"},
    }
    plan = stack.tf.plan_json(stack.var_files, {**stack.variables, "retrain_runtime_env": own})
    (retrain,) = [
        change["change"]["after"]
        for change in plan["resource_changes"]
        if change["address"] == 'module.function["retrain"].aws_lambda_function.this'
    ]
    assert retrain_runtime_env(retrain["environment"][0]["variables"]) == {
        **own,
        "env_vars": {**own["env_vars"], "MLAAS4HEP_STAGING_CACHE": staging_cache},
    }


def test_second_plan_has_no_drift(stack):
    code, text = stack.tf.plan_exit_code(stack.var_files, stack.variables)
    assert code == 0, text[-3000:]


def planned(plan: dict, kind: str) -> dict[str, dict]:
    """The planned values of every resource of one type, by address."""
    return {
        change["address"]: change["change"]["after"]
        for change in plan["resource_changes"]
        if change["type"] == kind
    }


def test_functions_in_a_vpc_and_with_a_kms_key_have_what_they_need(stack, moto_server):
    """With subnets and security groups the functions run in the VPC (where a private Ray
    head is reached) and their roles may attach network interfaces; with a KMS key every
    role may use it for the buckets and queues it touches. Planned, not applied."""
    ec2 = moto_server.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="it-fn", Description="functions", VpcId=vpc)
    key = moto_server.client("kms").create_key(Description="it")["KeyMetadata"]["Arn"]
    variables = {
        **stack.variables,
        "function_subnet_ids": [subnet],
        "function_security_group_ids": [group["GroupId"]],
        "kms_key_arn": key,
    }
    plan = stack.tf.plan_json(stack.var_files, variables)
    functions = planned(plan, "aws_lambda_function")
    assert len(functions) == len(FUNCTIONS)
    for after in functions.values():
        (vpc_config,) = after["vpc_config"]
        assert vpc_config["subnet_ids"] == [subnet]
        assert vpc_config["security_group_ids"] == [group["GroupId"]]
    policies = planned(plan, "aws_iam_role_policy")
    assert len(policies) == len(FUNCTIONS)
    for after in policies.values():
        statements = {st["Sid"]: st for st in json.loads(after["policy"])["Statement"]}
        kms = statements["UseDataKey"]
        assert set(kms["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey"}
        assert kms["Resource"] == key
        assert "ec2:CreateNetworkInterface" in statements["AttachToVpc"]["Action"]
    # subnets without a security group: refused, naming the variable
    with pytest.raises(TerraformError, match="function_security_group_ids"):
        stack.tf.plan_json(stack.var_files, {**stack.variables, "function_subnet_ids": [subnet]})


def test_uploads_yield_the_dataset_spec_of_the_files(stack, shared_data, tmp_path):
    urls = [upload(stack, shared_data / name, f"datasets/events/{name}") for name in GOOD_FILES]
    wait_for(lambda: dataset_files(stack, "events") == 3, 60, what="3 files in the spec")
    through_events, _ = read_dataset_spec(stack.config, "events")

    assert cli_main(["specs", *urls, "-o", str(tmp_path / "direct.json")]) == 0
    direct = DatasetSpec.from_json((tmp_path / "direct.json").read_text())
    assert through_events == direct
    assert through_events == DatasetSpec.empty().merge(*map(compute_file_spec, urls))


def test_a_file_that_leaves_or_changes_leaves_or_changes_the_dataset_spec(
    stack, shared_data, tmp_path
):
    """Delete one of three landed files and land a fourth: three are counted, not the
    deleted one, and its FileSpecs are gone. Overwrite a file: its spec is replaced,
    counted once."""
    keys = [f"datasets/leaving/{name}" for name in GOOD_FILES]
    for name, key in zip(GOOD_FILES, keys, strict=True):
        upload(stack, shared_data / name, key)
    wait_for(lambda: dataset_files(stack, "leaving") == 3, 60, what="3 files in the spec")
    # The data bucket is versioned: a plain delete adds a delete marker, of which AWS
    # notifies (ObjectRemoved:DeleteMarkerCreated) and moto does not; deleting the one
    # version, which both notify (ObjectRemoved:Delete), takes the same path.
    version = stack.s3.head_object(Bucket=stack.config.data_bucket, Key=keys[1])["VersionId"]
    stack.s3.delete_object(Bucket=stack.config.data_bucket, Key=keys[1], VersionId=version)
    fourth = write_events(tmp_path / "fourth.root", 700, seed=4)
    upload(stack, fourth, "datasets/leaving/fourth.root")
    gone = f"s3://{stack.config.data_bucket}/{keys[1]}"

    def settled() -> bool:
        files = read_dataset_spec(stack.config, "leaving")[0].files
        return len(files) == 3 and gone not in files

    wait_for(settled, 60, what="the deleted file out of the spec, the fourth in")
    prefix = f"{stack.config.file_specs_prefix}leaving/{GOOD_FILES[1]}@"
    listed = stack.s3.list_objects_v2(Bucket=stack.config.specs_bucket, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0  # its FileSpecs were deleted too

    replaced = write_events(tmp_path / "replaced.root", 900, seed=5)
    upload(stack, replaced, "datasets/leaving/fourth.root")  # same key, new content

    def counted_once() -> bool:
        spec = read_dataset_spec(stack.config, "leaving")[0]
        ours = spec.files.get(f"s3://{stack.config.data_bucket}/datasets/leaving/fourth.root")
        return len(spec.files) == 3 and ours is not None and ours.entries == 900

    wait_for(counted_once, 60, what="the overwritten file counted once, with its new events")
    wait_for(lambda: pipeline_idle(stack), 60, what="the pipeline idle")


def test_a_manifest_of_root_urls_goes_through_specs_and_retraining(
    stack, shared_data, publish_to_xrootd
):
    """A dataset given as a manifest of root:// URLs on the local XRootD server: its
    entries fanned out, their specs computed over XRootD, the DatasetSpec made of the
    URLs (equal to computing them directly) and a retraining submitted that succeeds; a
    new version of the manifest drops an entry and a malformed one changes nothing; the
    deleted manifest empties the DatasetSpec."""
    urls = [publish_to_xrootd(shared_data / name, f"manifest/{name}") for name in GOOD_FILES]
    key = f"{stack.config.data_prefix}remote/files.txt"
    put = lambda text: stack.s3.put_object(  # noqa: E731
        Bucket=stack.config.data_bucket, Key=key, Body=text.encode()
    )
    put("# three files on the local XRootD server\n" + "\n".join(urls) + "\n")

    def files() -> set[str]:
        return set(read_dataset_spec(stack.config, "remote")[0].files)

    wait_for(lambda: files() == set(urls), 90, what="the manifest's 3 URLs in the spec")
    spec, _ = read_dataset_spec(stack.config, "remote")
    assert spec == DatasetSpec.empty().merge(*map(compute_file_spec, urls))
    state = wait_for(
        lambda: (
            retrain_state(stack, "remote").get("status") == "succeeded"
            and retrain_state(stack, "remote")
        ),
        90,
        0.5,
        "the remote dataset's retraining",
    )
    (job,) = [
        j for j in stack.ray.jobs() if j["submission_id"] == state["attempts"][0]["submission_id"]
    ]
    assert job["entrypoint"] == stack.entrypoint.replace("{dataset}", "remote")

    put("\n".join(urls[1:]) + "\n")  # the first file leaves the dataset
    wait_for(lambda: files() == set(urls[1:]), 60, what="the dropped entry out of the spec")
    put(urls[0] + "\nroot://elsewhere//x.root; rm -rf /\n")  # malformed: nothing changes
    records = wait_for(
        lambda: [
            r
            for r in read_quarantine(stack.config, "remote")
            if r["source"].endswith("/files.txt") and "line 2" in r["error"]
        ],
        60,
        what="the malformed manifest quarantined",
    )
    assert records[0]["error_type"] == "ManifestError"
    assert files() == set(urls[1:])
    # every version (moto notifies the deletion of a version, not a delete marker)
    versions = stack.s3.list_object_versions(Bucket=stack.config.data_bucket, Prefix=key)
    for item in versions.get("Versions", []):
        stack.s3.delete_object(
            Bucket=stack.config.data_bucket, Key=key, VersionId=item["VersionId"]
        )
    wait_for(lambda: files() == set(), 60, what="the deleted manifest's entries out")
    wait_for(lambda: pipeline_idle(stack), 60, what="the pipeline idle")


def test_a_file_with_many_baskets_is_read_in_a_few_requests(stack, moto_server, tmp_path):
    # Each GET is a round trip on S3, and on moto a copy of the whole object: a spec must
    # not cost one per basket (uproot's "64 MB" step reads every basket's header), nor
    # one per metadata record (the first 64 KiB hold the header, directory and tree).
    path = write_events(tmp_path / "baskets.root", 20_000, seed=5, basket=500)
    key = "datasets/baskets/many.root"
    url = upload(stack, path, key)
    wait_for(lambda: dataset_files(stack, "baskets") == 1, 60, what="the file in the spec")
    with open_tree(path) as tree:
        baskets = sum(tree.tree[name].num_baskets for name in tree.select())
    request = f"GET /{stack.config.data_bucket}/{key} HTTP"  # after werkzeug's colour codes
    gets = [line for line in moto_server.log_path.read_text().splitlines() if request in line]
    assert baskets == 280
    assert 0 < len(gets) <= 4, gets
    spec, _ = read_dataset_spec(stack.config, "baskets")
    assert spec.files[url].entries == 20_000


def test_events_delivered_twice_are_counted_once(stack):
    spec_before, etag_before = read_dataset_spec(stack.config, "events")
    listing = stack.s3.list_objects_v2(
        Bucket=stack.config.specs_bucket, Prefix=f"{stack.config.file_specs_prefix}events/"
    )
    spec_keys = [item["Key"] for item in listing["Contents"]]
    assert len(spec_keys) == 3
    functions = stack.outputs["functions"]
    for _ in range(2):  # replay both hops: data events to spec_file, spec events to merge
        for name in GOOD_FILES:
            head = stack.s3.head_object(
                Bucket=stack.config.data_bucket, Key=f"datasets/events/{name}"
            )
            body = s3_event(stack.config.data_bucket, f"datasets/events/{name}", head)
            stack.sqs.send_message(QueueUrl=functions["spec_file"]["queue_url"], MessageBody=body)
        for key in spec_keys:
            head = stack.s3.head_object(Bucket=stack.config.specs_bucket, Key=key)
            body = s3_event(stack.config.specs_bucket, key, head)
            stack.sqs.send_message(QueueUrl=functions["merge_specs"]["queue_url"], MessageBody=body)
    for name in ("spec_file", "merge_specs"):
        wait_for(lambda n=name: queue_depth(stack, functions[n]["queue_url"]) == 0, 60)
    spec_after, etag_after = read_dataset_spec(stack.config, "events")
    assert spec_after == spec_before
    assert spec_after.entries == spec_before.entries
    assert etag_after == etag_before  # nothing was even rewritten
    listing = stack.s3.list_objects_v2(
        Bucket=stack.config.specs_bucket, Prefix=f"{stack.config.file_specs_prefix}events/"
    )
    assert len(listing["Contents"]) == 3


def s3_event(bucket: str, key: str, head: dict) -> str:
    from urllib.parse import quote_plus

    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {
                "key": quote_plus(key, safe="/"),
                "size": head["ContentLength"],
                "eTag": head["ETag"].strip('"'),
                "versionId": head.get("VersionId", ""),
            },
        },
    }
    return json.dumps({"Records": [record]})


WRITERS = 16


def test_concurrent_merges_keep_every_file(stack, shared_data):
    # 16 writers, 8 at a time: every write but one per round conflicts (the attempts are
    # quadratic in the writers, so more of them only make the test slower)
    base = compute_file_spec(shared_data / "uproot-Zmumu.root")
    specs = [
        dataclasses.replace(
            base, source=f"s3://elsewhere/run{i:02d}.root", identity={"size": 1, "etag": str(i)}
        )
        for i in range(WRITERS)
    ]
    with ThreadPoolExecutor(max_workers=WRITERS // 2) as pool:
        outcomes = list(
            pool.map(lambda spec: merge_into_dataset(stack.config, "concurrent", [spec]), specs)
        )
    merged, _ = read_dataset_spec(stack.config, "concurrent")
    assert sorted(merged.files) == sorted(spec.key for spec in specs)
    assert merged.entries == WRITERS * base.entries
    assert all(outcome.changed for outcome in outcomes)
    assert sum(outcome.attempts for outcome in outcomes) > WRITERS  # the writes did conflict

    # The same files again, concurrently: nothing changes, nothing is counted twice.
    with ThreadPoolExecutor(max_workers=WRITERS // 2) as pool:
        again = list(
            pool.map(lambda spec: merge_into_dataset(stack.config, "concurrent", [spec]), specs)
        )
    assert not any(outcome.changed for outcome in again)
    assert read_dataset_spec(stack.config, "concurrent")[0] == merged


def test_truncated_file_is_quarantined_and_dead_lettered(stack, shared_data, tmp_path):
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes((shared_data / "uproot-HZZ.root").read_bytes()[:40_000])
    good = [upload(stack, shared_data / n, f"datasets/mixed/{n}") for n in GOOD_FILES[:2]]
    bad = upload(stack, truncated, "datasets/mixed/truncated run.root")  # a space: '+' in events
    dlq = stack.outputs["functions"]["spec_file"]["dlq_url"]

    wait_for(lambda: dataset_files(stack, "mixed") == 2, 60, what="the good files")
    wait_for(lambda: queue_depth(stack, dlq) == 1, 60, what="the DLQ")

    message = stack.sqs.receive_message(QueueUrl=dlq, AttributeNames=["All"])["Messages"][0]
    assert "truncated+run.root" in message["Body"]
    assert int(message["Attributes"]["ApproximateReceiveCount"]) >= 2
    records = read_quarantine(stack.config, "mixed")
    assert [r["source"] for r in records] == [bad]
    assert records[0]["error_type"] == "ReadError"
    assert records[0]["last_receive"] is True  # written first, then given the error
    assert "truncated run.root" in records[0]["error"]
    spec, _ = read_dataset_spec(stack.config, "mixed")
    assert sorted(spec.files) == sorted(good)
    assert bad not in spec.files


def test_a_hostile_key_never_reaches_a_spec_a_job_or_a_shell(stack, shared_data):
    """A key whose dataset part is a shell command (and one with a space) is rejected where
    it is parsed: a record names the key, no spec, no DatasetSpec, no Ray job."""
    keys = ["datasets/x;echo${IFS}INJECTED;/t.root", "datasets/my data/t.root"]
    for key in keys:
        upload(stack, shared_data / "uproot-Zmumu.root", key)

    def rejected():
        found = []
        for key in keys:
            try:
                body = stack.s3.get_object(
                    Bucket=stack.config.specs_bucket, Key=stack.config.rejected_key(key)
                )["Body"].read()
            except stack.s3.exceptions.NoSuchKey:
                return None
            found.append(json.loads(body))
        return found

    records = wait_for(rejected, 60, what="the rejection records")
    assert [r["key"] for r in records] == keys
    assert all(r["error_type"] == "RejectedKey" and "not allowed" in r["error"] for r in records)
    wait_for(lambda: pipeline_idle(stack), 60, 0.5, "the pipeline's queues to drain")
    listed = stack.s3.list_objects_v2(Bucket=stack.config.specs_bucket).get("Contents", [])
    assert not [o["Key"] for o in listed if "INJECTED" in o["Key"] or "my data" in o["Key"]]
    datasets = [j.get("metadata", {}).get("dataset", "") for j in stack.ray.jobs()]
    assert not [d for d in datasets if "INJECTED" in d or " " in d], datasets


def test_burst_of_ten_files_gives_one_training_job(stack, shared_data):
    source = shared_data / "uproot-Zmumu.root"
    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(lambda i: upload(stack, source, f"datasets/burst/file{i}.root"), range(10)))
    wait_for(lambda: dataset_files(stack, "burst") == 10, 90, what="10 files in the spec")

    def burst_jobs():
        return [j for j in stack.ray.jobs() if j.get("metadata", {}).get("dataset") == "burst"]

    wait_for(burst_jobs, 30, 0.5, "the training submission")
    wait_for(lambda: pipeline_idle(stack), 60, 0.5, "the pipeline's queues to drain")
    jobs = burst_jobs()  # every recheck has run: no later submission can come
    assert len(jobs) == 1, jobs
    _, etag = read_dataset_spec(stack.config, "burst")
    assert jobs[0]["metadata"]["dataset_etag"] == etag.strip('"')  # the final spec version
    assert jobs[0]["entrypoint"] == stack.entrypoint.replace("{dataset}", "burst")
    done = wait_for(
        lambda: [j for j in burst_jobs() if j["status"] in ("SUCCEEDED", "FAILED")], 60, 1
    )
    assert done[0]["status"] == "SUCCEEDED"
    # the retrain step watched the job through delayed rechecks and recorded its end
    key = stack.config.retrain_state_key("burst")
    body = stack.s3.get_object(Bucket=stack.config.models_bucket, Key=key)["Body"]
    state = json.loads(body.read())
    assert state["status"] == "succeeded", state
    assert [(a["submission_id"], a["status"]) for a in state["attempts"]] == [
        (jobs[0]["submission_id"], "SUCCEEDED")
    ]


def test_a_job_that_fails_once_is_retried_once_and_succeeds(stack, shared_data):
    upload(stack, shared_data / "uproot-Zmumu.root", "datasets/flaky/file.root")
    key = stack.config.retrain_state_key("flaky")

    def settled():
        try:
            body = stack.s3.get_object(Bucket=stack.config.models_bucket, Key=key)["Body"]
        except stack.s3.exceptions.NoSuchKey:
            return None
        state = json.loads(body.read())
        return state if state.get("status") in ("succeeded", "failed") else None

    state = wait_for(settled, 120, 0.5, "the flaky dataset's retraining to settle")
    assert state["status"] == "succeeded", state
    attempts = [(a["submission_id"], a["status"], a["exit_code"]) for a in state["attempts"]]
    first = attempts[0][0]
    assert attempts == [(first, "FAILED", 1), (f"{first}-a2", "SUCCEEDED", 0)]
    ray_jobs = {j["submission_id"]: j["status"] for j in stack.ray.jobs()}
    assert (ray_jobs[first], ray_jobs[f"{first}-a2"]) == ("FAILED", "SUCCEEDED")


def retrain_state(stack, dataset: str) -> dict:
    key = stack.config.retrain_state_key(dataset)
    try:
        body = stack.s3.get_object(Bucket=stack.config.models_bucket, Key=key)["Body"]
    except stack.s3.exceptions.NoSuchKey:
        return {}
    return json.loads(body.read())


def test_a_version_that_lands_while_ray_is_down_is_trained_once_ray_is_back(stack, shared_data):
    """Ray stopped: each check re-arms itself with a new delayed message (2, 4, 8 s …)
    instead of failing its delivery, so no message piles up deliveries towards the
    dead-letter queue however long Ray is away; the version is submitted once the head
    answers again (same address)."""
    stack.ray.stop()
    try:
        upload(stack, shared_data / "uproot-HZZ.root", "datasets/outage/file.root")
        wait_for(
            lambda: retrain_state(stack, "outage").get("unreachable", 0) >= 4,
            120, 0.5, "rechecks while Ray is down",
        )  # fmt: skip
        assert retrain_state(stack, "outage")["status"] == "unreachable"
    finally:
        stack.ray.start()
    state = wait_for(
        lambda: (s := retrain_state(stack, "outage")).get("status") == "succeeded" and s,
        180, 0.5, "the outage dataset trained after Ray came back",
    )  # fmt: skip
    assert [a["status"] for a in state["attempts"]] == ["SUCCEEDED"]
    dlq = stack.outputs["functions"]["retrain"]["dlq_url"]
    assert queue_depth(stack, dlq) == 0  # nothing was given up


def test_the_jobs_api_refuses_calls_without_the_clusters_token(stack):
    """The functions' submissions above carried the token from Secrets Manager; without
    it (or with another) the Jobs API refuses, and says so."""
    from mlaas4hep.pipeline import jobs_api

    for token, answer in (("", "wants a token"), ("not-the-token", "refused the token")):
        with pytest.raises(jobs_api.JobsError, match=answer):
            jobs_api.list_jobs(stack.ray.address, token=token)
        with pytest.raises(jobs_api.JobsError, match=answer):
            jobs_api.submit_job(stack.ray.address, "python -c 1", "intruder", token=token)
    assert [j for j in jobs_api.list_jobs(stack.ray.address, token=stack.token, all_jobs=True)]
    assert not [j for j in stack.ray.jobs() if j.get("submission_id") == "intruder"]
    environment = stack.outputs["functions"]["retrain"]["environment"]
    assert environment["MLAAS4HEP_RAY_TOKEN_SECRET"] == stack.outputs["ray_token_secret_arn"]
    assert stack.token not in json.dumps(stack.outputs)  # the value is never in Terraform


def test_the_stack_with_the_ray_cluster_in_a_vpc_applies_and_plans_clean(stack, moto_server):
    """The whole root module with the Ray cluster module and the functions in its VPC,
    applied to moto: the retrain function submits to the cluster's head, every function
    joins the cluster's clients group (the one group its head admits to the Jobs API),
    the nodes start with the token of the secret the function reads; a second plan is
    clean. The variables' rules on the cluster are checked on plans first, and the KMS
    key on a plan (moto drops a queue's policy when its encryption is switched in place;
    test_functions_in_a_vpc_and_with_a_kms_key_have_what_they_need checks the roles).
    Applied last, before the destroy: the pipeline's own jobs go to the local Ray head."""
    ec2 = moto_server.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.43.{i}.0/24")["Subnet"]["SubnetId"]
        for i in range(2)
    ]
    key = moto_server.client("kms").create_key(Description="it-cluster")["KeyMetadata"]["Arn"]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    cluster = {"enabled": True, "vpc_id": vpc, "subnet_ids": subnets, "ami_id": ami}
    variables = {
        **{name: value for name, value in stack.variables.items() if name != "ray_address"},
        "ray_cluster": cluster,
        "function_subnet_ids": subnets,
    }
    for wrong, named in [
        ({"ray_address": stack.ray.address}, "exclude each other"),
        ({"function_subnet_ids": []}, "function_subnet_ids is empty"),
        ({"ray_cluster": {"enabled": True, "ami_id": ami}}, "ray_cluster needs a VPC"),
        ({"serving_image_tag": "v1"}, "share one VPC"),
    ]:
        with pytest.raises(TerraformError, match=named):
            stack.tf.plan_json(stack.var_files, {**variables, **wrong})
    # with the key, the nodes' volumes and roles use it
    plan = stack.tf.plan_json(stack.var_files, {**variables, "kms_key_arn": key})
    templates = planned(plan, "aws_launch_template")
    assert len(templates) == 2
    for after in templates.values():
        assert after["block_device_mappings"][0]["ebs"][0]["kms_key_id"] == key
    for address, after in planned(plan, "aws_iam_role_policy").items():
        if ".ray_cluster[0]." in address:
            statements = {st["Sid"]: st for st in json.loads(after["policy"])["Statement"]}
            assert statements["UseDataKey"]["Resource"] == key

    stack.runtime.stop()  # nothing may submit to the cluster's (unreachable) address
    apply_on_moto(stack.tf, moto_server, stack.var_files, variables)
    stack.variables = variables  # what the destroy that follows is planned with
    outputs = stack.tf.output()
    ray = outputs["ray_cluster"]
    functions = outputs["functions"]
    assert functions["retrain"]["environment"]["MLAAS4HEP_RAY_ADDRESS"] == ray["jobs_address"]
    assert ray["jobs_address"] == "http://10.43.0.10:8265"
    lambdas = moto_server.client("lambda")
    for function in functions.values():
        config = lambdas.get_function(FunctionName=function["function_name"])["Configuration"]
        # a set in Terraform (subnet_ids): its order is the provider's, not the input's
        assert sorted(config["VpcConfig"]["SubnetIds"]) == sorted(subnets)
        assert config["VpcConfig"]["SecurityGroupIds"] == [ray["client_security_group_id"]]
    (head,) = ec2.describe_instances(InstanceIds=[ray["head_instance_id"]])["Reservations"][0][
        "Instances"
    ]
    assert head["VpcId"] == vpc and head["PrivateIpAddress"] == "10.43.0.10"
    templates = ec2.describe_launch_templates(
        Filters=[{"Name": "launch-template-name", "Values": ["mlaas4hep-it-ray-*"]}]
    )["LaunchTemplates"]
    assert len(templates) == 2
    for template in templates:
        (version,) = ec2.describe_launch_template_versions(
            LaunchTemplateId=template["LaunchTemplateId"], Versions=["$Default"]
        )["LaunchTemplateVersions"]
        data = version["LaunchTemplateData"]
        script = base64.b64decode(data["UserData"]).decode()
        assert f'"--token-secret" "{outputs["ray_token_secret_arn"]}"' in script
        assert '"mlaas4hep[ray,torch,s3,xrootd]==' in script
        assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    code, text = stack.tf.plan_exit_code(stack.var_files, variables)
    assert code == 0, text[-3000:]


def test_destroy_leaves_nothing(stack, moto_server):
    stack.runtime.stop()
    stack.tf.destroy(stack.var_files, stack.variables)
    stack.destroyed.append(True)
    assert stack.tf.state_resources() == []
    prefix = "mlaas4hep-it-"
    buckets = [b["Name"] for b in stack.s3.list_buckets()["Buckets"]]
    assert not [b for b in buckets if b.startswith(prefix)]
    assert not stack.sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls")
    functions = moto_server.client("lambda").list_functions()["Functions"]
    assert not [f for f in functions if f["FunctionName"].startswith(prefix)]
    roles = moto_server.client("iam").list_roles()["Roles"]
    assert not [r for r in roles if r["RoleName"].startswith(prefix)]
    alarms = moto_server.client("cloudwatch").describe_alarms(AlarmNamePrefix=prefix)
    assert not alarms["MetricAlarms"]
    listed = moto_server.client("secretsmanager").list_secrets()["SecretList"]
    assert not [s for s in listed if s["Name"].startswith(prefix)]
    running = moto_server.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": [f"{prefix}ray-head", f"{prefix}ray-workers"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    assert running == []
