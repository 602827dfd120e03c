"""The server-free parts of the event pipeline (mlaas4hep.pipeline): no servers, no Ray.

S3 is a real boto3 client on moto's in-process mock, which answers the conditional writes
the pipeline relies on (``IfNoneMatch='*'``, ``IfMatch``) as S3 does, with 412
PreconditionFailed; the one answer moto cannot give, S3's 409 ConditionalRequestConflict,
is stubbed explicitly (:func:`conflict_once`). Time is a fake clock.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from mlaas4hep.errors import ReadError
from mlaas4hep.pipeline import jobs_api, merge_step, retrain_step
from mlaas4hep.pipeline.config import MAX_SQS_DELAY, PipelineConfig, PipelineError, RejectedKey
from mlaas4hep.pipeline.merge_step import fold_file_specs, merge_into_dataset
from mlaas4hep.pipeline.notifications import S3Notification, parse_s3_notifications
from mlaas4hep.pipeline.retrain_step import retrain_command, retrain_datasets_of, retrain_if_quiet
from mlaas4hep.pipeline.spec_step import (
    LAST_RECEIVE_REASON,
    claim_spec,
    compute_and_store_file_spec,
    lease_is_takeable,
)
from mlaas4hep.pipeline.sqs import batch_response, handle_batch, queued_seconds
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec

CONFIG = PipelineConfig(
    data_bucket="data",
    specs_bucket="specs",
    models_bucket="models",
    ray_address="http://127.0.0.1:1",
    retrain_entrypoint="train {dataset} {dataset_spec_url} {models_url}",
    retrain_debounce_seconds=10,
    retrain_queue_url="queue",
    spec_lease_seconds=60,
)

# Settings that would send the client elsewhere than moto's in-process mock (the session's
# moto server sets AWS_ENDPOINT_URL when other test files use it).
_AWS_ELSEWHERE = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@pytest.fixture
def s3(monkeypatch) -> Iterator[Any]:
    """A boto3 S3 client on moto's in-process mock, with the three buckets of CONFIG."""
    for name in _AWS_ELSEWHERE:
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in (CONFIG.data_bucket, CONFIG.specs_bucket, CONFIG.models_bucket):
            client.create_bucket(Bucket=bucket)
        yield client


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def read_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def conflict_once(s3: Any, monkeypatch) -> list[dict[str, Any]]:
    """The one stub: the client's next conditional ``put_object`` fails with S3's 409
    ConditionalRequestConflict (another conditional write to the key is in flight), which
    moto never answers; every other call, and that one's retry, go to moto. Returns the
    list of the refused calls' arguments."""
    real_put, refused = s3.put_object, []

    def put_object(**kwargs):
        if not refused and ("IfMatch" in kwargs or "IfNoneMatch" in kwargs):
            refused.append(kwargs)
            raise ClientError(
                {
                    "Error": {"Code": "ConditionalRequestConflict", "Message": "in flight"},
                    "ResponseMetadata": {"HTTPStatusCode": 409},
                },
                "PutObject",
            )
        return real_put(**kwargs)

    monkeypatch.setattr(s3, "put_object", put_object)
    return refused


class FakeSQS:
    """Records the messages sent (moto's SQS would hold a delayed one back for its delay)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **kwargs):
        self.sent.append(kwargs)


def s3_event_body(bucket: str, key: str, **obj: Any) -> str:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, **obj}},
    }
    return json.dumps({"Records": [record]})


# ---------------------------------------------------------------- S3 notifications


def test_keys_are_url_form_decoded():
    body = s3_event_body("data", "datasets/run+2024/f%C3%A9e+%2B1.root", eTag='"abc"', size=7)
    (event,) = parse_s3_notifications(body)
    assert event.key == "datasets/run 2024/fée +1.root"
    assert event.etag == "abc"  # quotes stripped
    assert event.size == 7
    assert event.version == "abc"  # no version id: the ETag stands for the version


def test_version_id_wins_over_the_etag():
    (event,) = parse_s3_notifications(s3_event_body("data", "k", eTag="e", versionId="v1"))
    assert event.version == "v1"


def test_the_test_event_gives_no_record():
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "data"})
    assert parse_s3_notifications(body) == []


def test_an_sns_envelope_is_opened():
    inner = s3_event_body("data", "datasets/a/b.root", eTag="e")
    assert parse_s3_notifications(json.dumps({"Type": "Notification", "Message": inner}))[
        0
    ].key == ("datasets/a/b.root")


def test_records_without_s3_are_skipped():
    assert parse_s3_notifications({"Records": [{"eventSource": "aws:sqs"}]}) == []


# ---------------------------------------------------------------------- key layout


def test_key_layout():
    assert CONFIG.locate("datasets/ds/sub/f.root") == ("ds", "sub/f.root")
    for bad in ("other/ds/f.root", "datasets/ds", "datasets//f.root"):
        with pytest.raises(ValueError):
            CONFIG.locate(bad)
    assert CONFIG.file_spec_key("ds", "sub/f.root", "v/1") == "files/ds/sub/f.root@v_1.json"
    assert CONFIG.quarantine_key("ds", "f.root", "e") == "quarantine/ds/f.root@e.json"
    assert CONFIG.lease_key("ds", "f.root", "e") == "leases/ds/f.root@e.lease"
    assert CONFIG.dataset_spec_key("ds") == "datasets/ds/dataset.json"
    assert CONFIG.dataset_of_file_spec("files/ds/sub/f.root@e.json") == "ds"
    assert CONFIG.dataset_of_dataset_spec("datasets/ds/dataset.json") == "ds"
    with pytest.raises(ValueError):
        CONFIG.dataset_of_dataset_spec("datasets/ds/other.json")
    assert CONFIG.retrain_state_key("ds") == "retrain/ds/state.json"


def test_config_from_env():
    env = {
        "MLAAS4HEP_DATA_BUCKET": "d",
        "MLAAS4HEP_SPECS_BUCKET": "s",
        "MLAAS4HEP_SPEC_LEASE_SECONDS": "42",
        "MLAAS4HEP_RETRAIN_RUNTIME_ENV": '{"pip": ["x"]}',
    }
    config = PipelineConfig.from_env(env)
    assert (config.data_bucket, config.specs_bucket) == ("d", "s")
    assert config.spec_lease_seconds == 42
    assert config.lease_prefix == "leases/"
    assert config.retrain_runtime_env == {"pip": ["x"]}
    assert config.max_receive_count == 3  # the spec_file queue's default (infra)
    with pytest.raises(PipelineError):
        PipelineConfig.from_env({"MLAAS4HEP_DATA_BUCKET": "d"})


def test_config_reads_the_queues_max_receive_count():
    env = {"MLAAS4HEP_DATA_BUCKET": "d", "MLAAS4HEP_SPECS_BUCKET": "s"}
    config = PipelineConfig.from_env({**env, "MLAAS4HEP_MAX_RECEIVE_COUNT": "5"})
    assert config.max_receive_count == 5
    assert [config.is_last_receive(n) for n in (1, 4, 5, 6)] == [False, False, True, True]
    for bad in ("0", "-1", "three", "2.5", ""):
        with pytest.raises(PipelineError, match="MAX_RECEIVE_COUNT"):
            PipelineConfig.from_env({**env, "MLAAS4HEP_MAX_RECEIVE_COUNT": bad})


# ------------------------------------------------------------------- fold / merge


@pytest.fixture(scope="module")
def base_spec(shared_data):
    return compute_file_spec(shared_data / "uproot-Zmumu.root")


def variant(spec, i: int, etag: str = ""):
    return dataclasses.replace(
        spec, source=f"s3://data/datasets/ds/f{i}.root", identity={"etag": etag or f"e{i}"}
    )


def test_fold_counts_a_file_once(base_spec):
    a, b = variant(base_spec, 1), variant(base_spec, 2)
    once = fold_file_specs(DatasetSpec.empty(), [a, b])
    assert sorted(once.files) == sorted([a.key, b.key])
    assert fold_file_specs(once, [a, b, a]) == once
    assert once.entries == 2 * base_spec.entries


def test_fold_replaces_an_overwritten_file_unless_the_spec_is_stale(base_spec):
    old, new = variant(base_spec, 1, "old"), variant(base_spec, 1, "new")
    dataset = fold_file_specs(DatasetSpec.empty(), [old])
    assert fold_file_specs(dataset, [new]).files[new.key].identity == {"etag": "new"}
    # The object is still at "old": the "new" spec is a late event about something else.
    kept = fold_file_specs(dataset, [new], lambda source: {"etag": "old"})
    assert kept.files[old.key].identity == {"etag": "old"}


def test_merge_retries_on_a_conflicting_write(s3, base_spec, monkeypatch):
    monkeypatch.setattr(merge_step.time, "sleep", lambda _: None)
    merge_into_dataset(CONFIG, "ds", [variant(base_spec, 1)], s3=s3)
    key, real_put, raced = CONFIG.dataset_spec_key("ds"), s3.put_object, []

    def racing_put(**kwargs):  # another merge writes between our read and our write
        if not raced and kwargs["Key"] == key:
            raced.append(True)
            current = DatasetSpec.from_json(s3.get_object(Bucket="specs", Key=key)["Body"].read())
            other = current.merge(variant(base_spec, 3))
            real_put(Bucket="specs", Key=key, Body=other.to_json().encode())
        return real_put(**kwargs)

    monkeypatch.setattr(s3, "put_object", racing_put)
    outcome = merge_into_dataset(CONFIG, "ds", [variant(base_spec, 2)], s3=s3)
    assert outcome.changed and outcome.attempts == 2
    assert outcome.files == 3  # nobody's file was lost
    again = merge_into_dataset(CONFIG, "ds", [variant(base_spec, 2)], s3=s3)
    assert not again.changed


def test_a_conditional_write_in_flight_is_retried_like_a_failed_condition(
    s3, base_spec, monkeypatch
):
    """409 ConditionalRequestConflict (another conditional write to the key is in flight):
    the merge and the claim try again, as on a 412."""
    monkeypatch.setattr(merge_step.time, "sleep", lambda _: None)
    refused = conflict_once(s3, monkeypatch)
    outcome = merge_into_dataset(CONFIG, "ds", [variant(base_spec, 1)], s3=s3)
    assert [r["IfNoneMatch"] for r in refused] == ["*"]
    assert outcome.changed and outcome.attempts == 2 and outcome.files == 1
    stored = s3.get_object(Bucket="specs", Key=CONFIG.dataset_spec_key("ds"))["Body"].read()
    assert len(DatasetSpec.from_json(stored).files) == 1

    refused = conflict_once(s3, monkeypatch)
    assert claim_spec(CONFIG, "ds", "f.root", "v1", "msg-a", s3=s3)
    assert [r["Key"] for r in refused] == [CONFIG.lease_key("ds", "f.root", "v1")]
    assert read_json(s3, "specs", CONFIG.lease_key("ds", "f.root", "v1"))["owner"] == "msg-a"


# --------------------------------------------------------------- spec claims


def test_claim_is_exclusive_until_it_expires(s3):
    now = [1000.0]
    assert claim_spec(CONFIG, "ds", "f.root", "v1", "msg-a", s3=s3, now=lambda: now[0])
    assert not claim_spec(CONFIG, "ds", "f.root", "v1", "msg-b", s3=s3, now=lambda: now[0])
    # The owner's redelivery (same SQS message id) takes its claim back at once.
    assert claim_spec(CONFIG, "ds", "f.root", "v1", "msg-a", s3=s3, now=lambda: now[0])
    now[0] += CONFIG.spec_lease_seconds + 1  # the owner died: the claim expired
    assert claim_spec(CONFIG, "ds", "f.root", "v1", "msg-b", s3=s3, now=lambda: now[0])
    assert not claim_spec(CONFIG, "ds", "f.root", "v1", "msg-a", s3=s3, now=lambda: now[0])


def test_lease_is_takeable():
    record = json.dumps({"owner": "a", "expires_at": 100.0})
    assert not lease_is_takeable(record, "b", 99.0)
    assert lease_is_takeable(record, "a", 99.0)
    assert lease_is_takeable(record, "b", 100.0)
    assert lease_is_takeable(b"not json", "b", 0.0)


def data_notification(key: str = "datasets/ds/f.root") -> S3Notification:
    return S3Notification(bucket="data", key=key, etag="e1", version_id="v1")


def fake_compute(entries: int = 5):
    """A stand-in for compute_file_spec that records its calls."""
    calls = []

    def compute(source: str):
        calls.append(source)
        return SimpleNamespace(
            identity={"version_id": "v1", "etag": "e1"},
            entries=entries,
            to_json=lambda: json.dumps({"source": source}),
        )

    return compute, calls


def test_a_duplicate_delivery_under_claim_does_not_compute(s3):
    compute, calls = fake_compute()
    assert claim_spec(CONFIG, "ds", "f.root", "v1", "first", s3=s3)
    outcome = compute_and_store_file_spec(
        data_notification(), CONFIG, s3=s3, compute=compute, owner="second"
    )
    assert outcome.status == "leased" and calls == []


def test_spec_is_stored_once_and_the_claim_released(s3):
    compute, calls = fake_compute()
    first = compute_and_store_file_spec(
        data_notification(), CONFIG, s3=s3, compute=compute, owner="m1"
    )
    assert first.status == "written" and first.entries == 5
    assert exists(s3, "specs", "files/ds/f.root@v1.json")
    lease = read_json(s3, "specs", "leases/ds/f.root@v1.lease")
    assert lease_is_takeable(json.dumps(lease), "anyone", 0.0)  # released
    second = compute_and_store_file_spec(
        data_notification(), CONFIG, s3=s3, compute=compute, owner="m2"
    )
    assert second.status == "exists" and len(calls) == 1


def test_the_outcome_says_where_the_time_went(s3):
    """On a fake clock where each S3 call takes 0.25 s and the computation 5 s, the outcome's
    three durations are exactly the computation and the calls before and after it."""
    now, calls = [0.0], []

    def round_trip(event_name: str, **_: Any) -> None:  # botocore's hook before each S3 call
        calls.append(event_name.rsplit(".", 1)[-1])
        now[0] += 0.25

    s3.meta.events.register("before-call.s3", round_trip)
    compute, _ = fake_compute()

    def slow(source):
        calls.append("compute")
        now[0] += 5.0
        return compute(source)

    outcome = compute_and_store_file_spec(
        data_notification(), CONFIG, s3=s3, compute=slow, owner="m1", clock=lambda: now[0]
    )
    assert outcome.status == "written"
    checks, stores = calls[: calls.index("compute")], calls[calls.index("compute") + 1 :]
    assert outcome.seconds == pytest.approx(5.0)
    assert {"HeadObject", "PutObject"} <= set(checks)  # existing spec, claim
    assert outcome.checks_seconds == pytest.approx(0.25 * len(checks))
    assert stores.count("PutObject") == 2  # the spec, the released claim
    assert outcome.store_seconds == pytest.approx(0.25 * len(stores))


def test_an_event_without_version_id_is_keyed_like_the_stored_spec(s3):
    s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket="data", Key="datasets/ds/f.root", Body=b"")["VersionId"]
    stored = CONFIG.file_spec_key("ds", "f.root", version)
    s3.put_object(Bucket="specs", Key=stored, Body=b"{}")
    compute, calls = fake_compute()
    event = S3Notification(bucket="data", key="datasets/ds/f.root", etag="e1")  # moto's kind
    outcome = compute_and_store_file_spec(event, CONFIG, s3=s3, compute=compute, owner="m")
    assert outcome.status == "exists" and calls == []
    assert outcome.spec_key == stored


def test_an_unreadable_file_is_quarantined_and_keeps_its_claim(s3):
    def broken(source):
        raise ReadError(source, "truncated")

    with pytest.raises(ReadError):
        compute_and_store_file_spec(
            data_notification(), CONFIG, s3=s3, compute=broken, owner="m1", receive_count=2
        )
    record = read_json(s3, "specs", "quarantine/ds/f.root@v1.json")
    assert record["error_type"] == "ReadError" and record["receive_count"] == 2
    assert exists(s3, "specs", "leases/ds/f.root@v1.lease")
    compute, calls = fake_compute()  # a duplicate: the owner's retries will settle it
    dup = compute_and_store_file_spec(
        data_notification(), CONFIG, s3=s3, compute=compute, owner="m2"
    )
    assert dup.status == "leased" and calls == []


class Killed(BaseException):
    """What a function killed for its memory or its time looks like from inside: nothing
    after this point runs, no ``except Exception`` sees it (handle_batch reports nothing)."""


QUARANTINED = "quarantine/ds/f.root@v1.json"
LAST_OF_THREE = dataclasses.replace(CONFIG, max_receive_count=3)


def watching(s3: Any, outcome: Any = None):
    """A compute that notes whether the quarantine record exists when it starts, then
    raises ``outcome`` (an exception) or returns a spec."""
    compute, _ = fake_compute()
    seen: list[bool] = []

    def watched(source: str):
        seen.append(exists(s3, "specs", QUARANTINED))
        if outcome is not None:
            raise outcome
        return compute(source)

    return watched, seen


def test_a_function_killed_on_the_last_delivery_leaves_a_quarantine_record(s3):
    compute, seen = watching(s3, Killed())
    with pytest.raises(Killed):
        compute_and_store_file_spec(
            data_notification(), LAST_OF_THREE, s3=s3, compute=compute, owner="m1", receive_count=3
        )
    assert seen == [True]  # written before the computation started
    record = read_json(s3, "specs", QUARANTINED)
    assert record["last_receive"] is True and record["receive_count"] == 3
    assert record["source"] == "s3://data/datasets/ds/f.root" and record["version"] == "v1"
    assert record["error_type"] == "LastReceive" and record["error"] == LAST_RECEIVE_REASON
    assert "killed (memory or time)" in record["error"]


def test_a_successful_last_delivery_leaves_no_record(s3):
    compute, seen = watching(s3)
    outcome = compute_and_store_file_spec(
        data_notification(), LAST_OF_THREE, s3=s3, compute=compute, owner="m1", receive_count=3
    )
    assert outcome.status == "written" and seen == [True]
    assert exists(s3, "specs", "files/ds/f.root@v1.json")
    assert not exists(s3, "specs", QUARANTINED)


def test_earlier_deliveries_write_nothing_before_computing(s3):
    for count in (1, 2):
        compute, seen = watching(s3, Killed())
        with pytest.raises(Killed):
            compute_and_store_file_spec(
                data_notification(),
                LAST_OF_THREE,
                s3=s3,
                compute=compute,
                owner="m1",
                receive_count=count,
            )
        assert seen == [False]
        assert not exists(s3, "specs", QUARANTINED)  # SQS delivers it again


@pytest.mark.parametrize(
    "error", [ReadError("s3://data/datasets/ds/f.root", "truncated"), MemoryError("4 GB")]
)
def test_an_error_on_the_last_delivery_replaces_the_record(s3, error):
    compute, seen = watching(s3, error)
    with pytest.raises(type(error)):
        compute_and_store_file_spec(
            data_notification(), LAST_OF_THREE, s3=s3, compute=compute, owner="m1", receive_count=3
        )
    record = read_json(s3, "specs", QUARANTINED)
    assert seen == [True] and record["last_receive"] is True
    assert record["error_type"] == type(error).__name__
    assert record["error"] == str(error) != LAST_RECEIVE_REASON


def test_an_unexpected_error_before_the_last_delivery_leaves_no_record(s3):
    compute, _ = watching(s3, MemoryError())
    with pytest.raises(MemoryError):
        compute_and_store_file_spec(
            data_notification(), LAST_OF_THREE, s3=s3, compute=compute, owner="m1", receive_count=2
        )
    assert not exists(s3, "specs", QUARANTINED)


def test_a_read_error_before_the_last_delivery_says_it_is_not_the_last(s3):
    compute, _ = watching(s3, ReadError("s3://data/datasets/ds/f.root", "truncated"))
    with pytest.raises(ReadError):
        compute_and_store_file_spec(
            data_notification(), LAST_OF_THREE, s3=s3, compute=compute, owner="m1", receive_count=1
        )
    assert read_json(s3, "specs", QUARANTINED)["last_receive"] is False


def test_objects_outside_the_data_prefix_are_skipped(s3):
    compute, calls = fake_compute()
    outcome = compute_and_store_file_spec(
        data_notification("elsewhere/f.root"), CONFIG, s3=s3, compute=compute
    )
    assert outcome.status == "skipped" and calls == []


# ------------------------------------------------------------------- debounce


def stored_dataset(s3: Any, updated_at: float) -> None:
    s3.put_object(
        Bucket="specs",
        Key=CONFIG.dataset_spec_key("ds"),
        Body=b"{}",
        Metadata={"updated-at": f"{updated_at:.6f}"},
    )


def test_debounce_defers_while_the_spec_is_fresh(s3):
    sqs = FakeSQS()
    stored_dataset(s3, updated_at=1000.0)
    outcome = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1003.5)
    assert outcome.status == "deferred" and outcome.delay == 7  # ceil(10 - 3.5)
    (message,) = sqs.sent
    assert message["DelaySeconds"] == 7 and message["QueueUrl"] == "queue"
    assert retrain_datasets_of(message["MessageBody"], CONFIG) == ["ds"]


class FakeJobs:
    """The Ray Jobs API as the retrain step sees it: submissions recorded, each job's
    status and exit code as the test sets them, and Ray out of reach on demand."""

    def __init__(self, monkeypatch) -> None:
        self.submitted: list[tuple[str, str, str]] = []
        self.ended: dict[str, tuple[str, int | None]] = {}
        self.down = False
        self.tokens: list[str | None] = []
        monkeypatch.setattr(jobs_api, "submit_job", self.submit)
        monkeypatch.setattr(jobs_api, "job_info", self.info)

    def submit(self, address, entrypoint, submission_id, **kwargs):
        self.tokens.append(kwargs.get("token"))
        if self.down:
            raise jobs_api.JobsUnreachable(f"Ray Jobs API at {address} unreachable: refused")
        known = any(s[2] == submission_id for s in self.submitted)
        self.submitted.append((address, entrypoint, submission_id))
        return submission_id, not known

    def info(self, address, submission_id, token=None):
        self.tokens.append(token)
        if self.down:
            raise jobs_api.JobsUnreachable(f"Ray Jobs API at {address} unreachable: refused")
        if not any(s[2] == submission_id for s in self.submitted):
            raise jobs_api.JobsError(f"no such job at {address}/api/jobs/{submission_id}")
        status, code = self.ended.get(submission_id, ("RUNNING", None))
        data = {"submission_id": submission_id, "status": status, "driver_exit_code": code}
        return jobs_api.JobInfo.from_api(data)


def retrain_state(s3: Any) -> dict[str, Any]:
    return read_json(s3, "models", CONFIG.retrain_state_key("ds"))


def test_debounce_submits_once_quiet_then_watches_the_job_to_its_end(s3, monkeypatch):
    sqs, jobs = FakeSQS(), FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    outcome = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1010.0)
    assert outcome.status == "submitted"
    assert jobs.submitted[0][1] == "train ds s3://specs/datasets/ds/dataset.json s3://models/ds/"
    state = retrain_state(s3)
    assert state["submission_id"] == jobs.submitted[0][2] and state["submitted_at"] == 1010.0
    assert state["status"] == "submitted" and len(state["attempts"]) == 1
    (watch,) = sqs.sent  # the job is checked again later
    assert watch["DelaySeconds"] == CONFIG.retry_delay(1) == 60
    assert retrain_datasets_of(watch["MessageBody"], CONFIG) == ["ds"]
    running = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1070.0)
    assert running.status == "running" and len(sqs.sent) == 2
    jobs.ended[outcome.submission_id] = ("SUCCEEDED", 0)
    done = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1130.0)
    assert done.status == "succeeded" and len(sqs.sent) == 2  # no more watching
    assert retrain_state(s3)["attempts"][0]["status"] == "SUCCEEDED"
    again = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 2000.0)
    assert again.status == "up-to-date" and len(jobs.submitted) == 1


def test_a_failed_job_is_retried_with_backoff_under_new_ids_then_given_up(s3, monkeypatch):
    sqs, jobs = FakeSQS(), FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    clock = [1010.0]
    check = lambda: retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: clock[0])  # noqa: E731
    first = check()
    delays = []
    for attempt in range(1, CONFIG.retrain_max_attempts + 1):
        jobs.ended[jobs.submitted[-1][2]] = ("FAILED", 1)
        outcome = check()
        if attempt == CONFIG.retrain_max_attempts:
            assert outcome.status == "failed"
            break
        assert outcome.status == "retrying"
        delays.append(outcome.delay)
        assert check().status == "deferred"  # an early recheck waits for the retry time
        clock[0] += outcome.delay
        assert check().status == "submitted"
    assert delays == [60, 120]  # doubling
    ids = [s[2] for s in jobs.submitted]
    assert ids == [first.submission_id, f"{first.submission_id}-a2", f"{first.submission_id}-a3"]
    state = retrain_state(s3)
    assert state["status"] == "failed"
    assert [a["submission_id"] for a in state["attempts"]] == ids
    assert {a["status"] for a in state["attempts"]} == {"FAILED"}
    assert check().status == "up-to-date" and len(jobs.submitted) == 3


def test_a_configuration_error_is_not_retried(s3, monkeypatch):
    sqs, jobs = FakeSQS(), FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    first = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1010.0)
    jobs.ended[first.submission_id] = ("FAILED", 2)  # the job's own "bad config/data" status
    assert retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1100.0).status == "failed"
    assert len(jobs.submitted) == 1 and retrain_state(s3)["attempts"][0]["exit_code"] == 2


def test_while_ray_is_unreachable_the_step_rearms_and_keeps_the_version(s3, monkeypatch):
    sqs, jobs = FakeSQS(), FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    jobs.down = True
    delays = [retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1010.0) for _ in range(6)]
    assert {d.status for d in delays} == {"deferred"}
    assert [d.delay for d in delays] == [60, 120, 240, 480, 900, 900]  # capped by SQS
    assert [m["DelaySeconds"] for m in sqs.sent] == [d.delay for d in delays]
    assert retrain_state(s3)["status"] == "unreachable" and jobs.submitted == []
    jobs.down = False
    outcome = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 5000.0)
    assert outcome.status == "submitted" and not outcome.submission_id.endswith("-a2")
    # Ray down while the job is watched: the watch re-arms too
    jobs.down = True
    assert retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 5100.0).status == "running"


def test_a_job_ray_no_longer_knows_is_submitted_again(s3, monkeypatch):
    sqs, jobs = FakeSQS(), FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1010.0)
    jobs.submitted.clear()  # a restarted head without its job table
    outcome = retrain_if_quiet(CONFIG, "ds", s3=s3, sqs=sqs, now=lambda: 1100.0)
    assert outcome.status == "retrying"
    assert retrain_state(s3)["attempts"][0]["status"] == "LOST"


def test_an_old_state_without_attempts_counts_as_settled(s3, monkeypatch):
    jobs = FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    etag = s3.head_object(Bucket="specs", Key=CONFIG.dataset_spec_key("ds"))["ETag"].strip('"')
    old = {"dataset": "ds", "dataset_etag": etag, "submission_id": "x", "submitted_at": 1.0}
    s3.put_object(Bucket="models", Key=CONFIG.retrain_state_key("ds"), Body=json.dumps(old))
    assert retrain_if_quiet(CONFIG, "ds", s3=s3, now=lambda: 2000.0).status == "up-to-date"
    assert jobs.submitted == []


def test_the_ray_token_comes_from_its_secret_and_goes_with_every_call(s3, monkeypatch):
    monkeypatch.setattr(retrain_step, "_TOKENS", {})
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the function's own client
    sqs, jobs = FakeSQS(), FakeJobs(monkeypatch)
    stored_dataset(s3, updated_at=1000.0)
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    arn = secrets.create_secret(Name="it-ray-token")["ARN"]
    config = dataclasses.replace(CONFIG, ray_token_secret=arn)
    # the secret without a value: refused, saying how to put one, and nothing submitted
    with pytest.raises(PipelineError, match="has no value: put the cluster's token"):
        retrain_if_quiet(config, "ds", s3=s3, sqs=sqs, now=lambda: 1010.0)
    assert jobs.submitted == [] and sqs.sent == []
    secrets.put_secret_value(SecretId=arn, SecretString="t0ken-of-the-cluster")
    first = retrain_if_quiet(config, "ds", s3=s3, sqs=sqs, now=lambda: 1010.0)
    assert first.status == "submitted"
    retrain_if_quiet(config, "ds", s3=s3, sqs=sqs, now=lambda: 1100.0)  # the watch
    assert jobs.tokens == ["t0ken-of-the-cluster"] * 2
    # no secret configured: an empty token, so no header and no default token either
    assert retrain_step.ray_token(CONFIG) == ""


def test_jobs_api_calls_carry_the_token_as_a_bearer_header(monkeypatch, tmp_path):
    for name in ("MLAAS4HEP_RAY_TOKEN", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert jobs_api._headers(None) == {} and jobs_api.default_token() == ""
    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / jobs_api.TOKEN_FILE).write_text("from-the-stack\n")
    assert jobs_api._headers(None) == {"Authorization": "Bearer from-the-stack"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-ray-env")
    assert jobs_api.default_token() == "from-ray-env"
    assert jobs_api._headers("given") == {"Authorization": "Bearer given"}
    assert jobs_api._headers("") == {}  # an explicit empty token sends none


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"driver_exit_code": 2}, 2),
        ({"message": "Job entrypoint command failed with exit code 1, last logs: …"}, 1),
        ({"message": "Job was stopped"}, None),
    ],
)
def test_the_exit_code_of_a_job(data, code):
    assert (
        jobs_api.JobInfo.from_api({"submission_id": "j", "status": "FAILED", **data}).exit_code
        == code
    )


def test_retry_settings_from_env():
    env = {"MLAAS4HEP_DATA_BUCKET": "d", "MLAAS4HEP_SPECS_BUCKET": "s"}
    config = PipelineConfig.from_env(
        {**env, "MLAAS4HEP_RETRAIN_MAX_ATTEMPTS": "5", "MLAAS4HEP_RETRAIN_RETRY_SECONDS": "30"}
    )
    assert (config.retrain_max_attempts, config.retry_delay(3)) == (5, 120)
    with pytest.raises(PipelineError, match="MLAAS4HEP_RETRAIN_MAX_ATTEMPTS"):
        PipelineConfig.from_env({**env, "MLAAS4HEP_RETRAIN_MAX_ATTEMPTS": "0"})


def test_debounce_without_ray_or_spec(s3):
    assert retrain_if_quiet(CONFIG, "ds", s3=s3).status == "absent"
    off = dataclasses.replace(CONFIG, ray_address="")
    assert retrain_if_quiet(off, "ds", s3=s3).status == "disabled"


def test_the_debounce_delay_is_capped_by_sqs(s3):
    sqs = FakeSQS()
    slow = dataclasses.replace(CONFIG, retrain_debounce_seconds=5000)
    stored_dataset(s3, updated_at=1000.0)
    outcome = retrain_if_quiet(slow, "ds", s3=s3, sqs=sqs, now=lambda: 1000.0)
    assert outcome.delay == MAX_SQS_DELAY


# --------------------------------------------------------- partial batch responses


def test_partial_batch_response_names_only_the_failures():
    def process(record):
        if record["body"] == "bad":
            raise ValueError("boom")

    event = {
        "Records": [
            {"messageId": "1", "body": "ok"},
            {"messageId": "2", "body": "bad"},
            {"messageId": "3", "body": "ok"},
        ]
    }
    assert handle_batch(event, process) == {"batchItemFailures": [{"itemIdentifier": "2"}]}
    assert batch_response([]) == {"batchItemFailures": []}
    assert batch_response(["a", "b", "a"])["batchItemFailures"] == [
        {"itemIdentifier": "a"},
        {"itemIdentifier": "b"},
    ]


def test_queued_seconds():
    record = {"attributes": {"SentTimestamp": "1000500"}}
    assert queued_seconds(record, now=1002.0) == pytest.approx(1.5)
    assert queued_seconds({}) == 0.0


# ------------------------------------------------------------- hostile object keys

INJECTION_KEY = "datasets/x;echo${IFS}INJECTED;/t.root"


def test_a_key_with_a_hostile_dataset_name_is_rejected_and_recorded(s3):
    compute, calls = fake_compute()
    outcome = compute_and_store_file_spec(
        data_notification(INJECTION_KEY), CONFIG, s3=s3, compute=compute, owner="m1"
    )
    assert outcome.status == "rejected" and calls == []  # never read
    record = read_json(s3, "specs", CONFIG.rejected_key(INJECTION_KEY))
    assert record["key"] == INJECTION_KEY and "is not allowed" in record["error"]
    assert record["error_type"] == "RejectedKey"


@given(st.text(min_size=1, max_size=80))
def test_only_plain_dataset_names_pass(name):
    key = f"datasets/{name}/f.root"
    plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name) is not None
    if "/" in name:
        return  # another layout: the first part is the name
    try:
        dataset, _ = CONFIG.locate(key)
    except RejectedKey:
        assert not plain
    else:
        assert plain and dataset == name


@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
)
def test_every_value_in_the_retrain_command_is_one_shell_word(dataset, url):
    command = retrain_command("train {dataset} {dataset_spec_url} {models_url}", dataset, url, url)
    assert shlex.split(command) == ["train", dataset, url, url]
