"""Dataset manifests (mlaas4hep.pipeline.manifests, .manifest_step): parsing and checking,
the entry keys, and the fan-out against S3 and SQS on moto's in-process mock (no servers;
the pipeline test runs a manifest of root:// URLs through the real stack)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from mlaas4hep.errors import ReadError
from mlaas4hep.pipeline.config import PipelineConfig, RejectedKey
from mlaas4hep.pipeline.manifest_step import (
    apply_manifest,
    compute_manifest_entry,
    parse_entry_message,
)
from mlaas4hep.pipeline.manifests import (
    MAX_ENTRIES,
    ManifestError,
    entry_path,
    parse_manifest,
    url_of_entry_path,
)
from mlaas4hep.pipeline.merge_step import merge_batch, read_dataset_spec
from mlaas4hep.pipeline.notifications import S3Notification
from mlaas4hep.pipeline.spec_function import spec_batch
from mlaas4hep.spec.compute import compute_file_spec

_AWS_ELSEWHERE = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z]{2,5})?(:[1-9][0-9]{1,4})?", fullmatch=True)
segments = st.lists(st.from_regex(r"[A-Za-z0-9_.+=-]{1,12}", fullmatch=True), max_size=4)
urls = st.builds(
    lambda scheme, host, parts, name: f"{scheme}://{host}/{'/'.join(['', *parts, name])}.root",
    st.sampled_from(["root", "https", "davs"]),
    hosts,
    segments,
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
)


@given(st.lists(urls, max_size=30), st.booleans())
def test_a_manifest_lists_its_urls_in_order_once_in_either_format(listed, wrapped):
    text = "# the ttH sample\n\n" + "\n".join(f"  {u}  " for u in listed) + "\n"
    expected = list(dict.fromkeys(listed))
    assert parse_manifest(text.encode(), "files.txt", "m") == expected
    document = {"files": listed} if wrapped else listed
    assert parse_manifest(json.dumps(document).encode(), "files.json", "m") == expected


@given(st.text(min_size=1, max_size=200))
def test_an_entry_path_gives_back_its_url_whatever_it_holds(url):
    path = entry_path("files.txt", url)
    assert url_of_entry_path(path) == url
    assert "@" not in path.rsplit("/", 1)[-1]  # the FileSpec key's version separator


@pytest.mark.parametrize(
    ("body", "name", "named"),
    [
        (b"root://h//a.root\nroot://h//b.root; rm -rf /\n", "files.txt", "line 2"),
        (b"root://h//a.root x\n", "files.txt", "whitespace"),
        (b"file:///etc/passwd.root\n", "files.txt", "is not a root://"),
        (b"s3://bucket/a.root\n", "files.txt", "is not a root://"),
        (b"http://h/a.root\n", "files.txt", "is not a root://"),
        (b"root:///a.root\n", "files.txt", "names no host"),
        (b"root://h//a.txt\n", "files.txt", "not the path of a .root file"),
        (b"https://h/a.root?x=1\n", "files.txt", "not the path of a .root file"),
        (b"\xff\xfe", "files.txt", "not UTF-8"),
        (b"[1]", "files.json", "entry 0: an entry must be a URL string"),
        (b'{"files": "root://h//a.root"}', "files.json", "give a list"),
        (b'{"urls": []}', "files.json", "give a list"),
        (b"[", "files.json", "not JSON"),
        (("root://h//a.root\n" * (MAX_ENTRIES + 1)).encode(), "files.txt", "more than"),
        (b"#" * (1 << 20 | 1), "files.txt", "larger than"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_where(body, name, named):
    with pytest.raises(ManifestError, match=named):
        parse_manifest(body, name, "s3://data/datasets/ds/" + name)


CONFIG = PipelineConfig(
    data_bucket="data", specs_bucket="specs", spec_queue_url="", max_receive_count=3
)


def test_entry_spec_keys_read_back_as_their_url_and_data_keys_cannot_take_their_place():
    url = "root://eos.example.org:1094//store/ttH/a@b.root"
    key = CONFIG.file_spec_key("ds", entry_path("files.json", url), "adler32-1_size-9")
    assert CONFIG.source_of_file_spec(key) == url
    assert CONFIG.source_of_file_spec("files/ds/x.root@v1.json") == "s3://data/datasets/ds/x.root"
    with pytest.raises(RejectedKey, match="_manifest/"):
        CONFIG.locate("datasets/ds/_manifest/files.txt/x.root")


@pytest.fixture
def aws(monkeypatch) -> Iterator[SimpleNamespace]:
    for name in _AWS_ELSEWHERE:
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        for bucket in ("data", "specs"):
            s3.create_bucket(Bucket=bucket)
        queue = sqs.create_queue(QueueName="spec")["QueueUrl"]
        config = PipelineConfig(
            data_bucket="data", specs_bucket="specs", spec_queue_url=queue, max_receive_count=3
        )
        yield SimpleNamespace(s3=s3, sqs=sqs, queue=queue, config=config)


def put_manifest(aws, urls: list[str], name: str = "files.txt") -> S3Notification:
    key = f"datasets/ds/{name}"
    body = "\n".join(urls) if name.endswith(".txt") else json.dumps(urls)
    answer = aws.s3.put_object(Bucket="data", Key=key, Body=body.encode())
    return S3Notification(bucket="data", key=key, etag=answer["ETag"].strip('"'))


def sent_entries(aws) -> list[dict[str, str]]:
    messages = []
    while True:
        got = aws.sqs.receive_message(QueueUrl=aws.queue, MaxNumberOfMessages=10)
        if not got.get("Messages"):
            return messages
        for message in got["Messages"]:
            messages.append(parse_entry_message(message["Body"]))
            aws.sqs.delete_message(QueueUrl=aws.queue, ReceiptHandle=message["ReceiptHandle"])


def fake_compute(calls: list[str]):
    def compute(url: str) -> Any:
        calls.append(url)
        return SimpleNamespace(
            source=url,
            identity={"adler32": "0badf00d", "size": 123},
            entries=7,
            to_json=lambda: json.dumps({"source": url}),
        )

    return compute


def entry_specs(aws) -> dict[str, str]:
    """URL -> FileSpec key of every stored manifest entry spec."""
    listed = aws.s3.list_objects_v2(Bucket="specs", Prefix="files/ds/_manifest/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    return {aws.config.source_of_file_spec(key): key for key in keys}


URLS = [f"root://127.0.0.1:1094//data/f{i}.root" for i in range(12)]


def test_a_manifest_fans_out_its_entries_and_a_new_version_drops_and_adds(aws):
    first = apply_manifest(put_manifest(aws, URLS), aws.config, s3=aws.s3, sqs=aws.sqs)
    assert first.status == "applied" and list(first.sent) == URLS  # in two batches of ≤ 10
    entries = sent_entries(aws)
    assert [e["url"] for e in entries] == URLS
    calls: list[str] = []
    for entry in entries:
        done = compute_manifest_entry(entry, aws.config, s3=aws.s3, compute=fake_compute(calls))
        assert done.status == "written", done
    assert calls == URLS and set(entry_specs(aws)) == set(URLS)
    key = entry_specs(aws)[URLS[0]]
    assert key.endswith("@adler32-0badf00d_size-123.json")
    # a second delivery of an entry computes nothing
    again = compute_manifest_entry(entries[0], aws.config, s3=aws.s3, compute=fake_compute(calls))
    assert again.status == "exists" and len(calls) == len(URLS)

    # the same manifest again: nothing to send
    same = apply_manifest(put_manifest(aws, URLS), aws.config, s3=aws.s3, sqs=aws.sqs)
    assert (same.sent, same.dropped, same.kept) == ((), (), len(URLS))
    # a new version: two entries fewer, one more
    new_url = "https://data.example.org/ttH/extra.root"
    changed = apply_manifest(
        put_manifest(aws, [*URLS[2:], new_url]), aws.config, s3=aws.s3, sqs=aws.sqs
    )
    assert set(changed.dropped) == set(URLS[:2]) and changed.sent == (new_url,)
    assert set(entry_specs(aws)) == set(URLS[2:])
    # an entry message of the old version is not computed any more
    stale = compute_manifest_entry(entries[0], aws.config, s3=aws.s3, compute=fake_compute(calls))
    assert stale.status == "superseded" and len(calls) == len(URLS)

    # deleting the manifest drops every entry
    aws.s3.delete_object(Bucket="data", Key="datasets/ds/files.txt")
    gone = S3Notification(
        bucket="data", key="datasets/ds/files.txt", event_name="ObjectRemoved:Delete"
    )
    removed = apply_manifest(gone, aws.config, s3=aws.s3, sqs=aws.sqs)
    assert removed.status == "removed" and set(removed.dropped) == set(URLS[2:])
    assert entry_specs(aws) == {}


def test_a_malformed_manifest_is_quarantined_and_changes_nothing(aws):
    apply_manifest(put_manifest(aws, URLS[:3], "files.json"), aws.config, s3=aws.s3, sqs=aws.sqs)
    for entry in sent_entries(aws):
        compute_manifest_entry(entry, aws.config, s3=aws.s3, compute=fake_compute([]))
    bad = put_manifest(aws, [URLS[0], "root://h//x.root;reboot"], "files.json")
    outcome = apply_manifest(bad, aws.config, s3=aws.s3, sqs=aws.sqs)
    assert outcome.status == "quarantined" and sent_entries(aws) == []
    assert set(entry_specs(aws)) == set(URLS[:3])
    listed = aws.s3.list_objects_v2(Bucket="specs", Prefix="quarantine/ds/files.json@")
    (record_key,) = [item["Key"] for item in listed["Contents"]]
    record = json.loads(aws.s3.get_object(Bucket="specs", Key=record_key)["Body"].read())
    assert "entry 1" in record["error"] and record["error_type"] == "ManifestError"


def test_an_unreadable_entry_is_quarantined_naming_its_url_and_manifest(aws):
    apply_manifest(put_manifest(aws, URLS[:1]), aws.config, s3=aws.s3, sqs=aws.sqs)
    (entry,) = sent_entries(aws)

    def unreadable(url: str):
        raise ReadError(url, "XRootD error: [3011] No such file or directory")

    with pytest.raises(ReadError):
        compute_manifest_entry(entry, aws.config, s3=aws.s3, compute=unreadable)
    listed = aws.s3.list_objects_v2(Bucket="specs", Prefix="quarantine/ds/_manifest/")
    (record_key,) = [item["Key"] for item in listed["Contents"]]
    record = json.loads(aws.s3.get_object(Bucket="specs", Key=record_key)["Body"].read())
    assert record["source"] == URLS[0]
    assert record["manifest"] == "s3://data/datasets/ds/files.txt"
    assert "No such file" in record["error"]
    # once readable, the spec is stored and the record cleared
    compute_manifest_entry(entry, aws.config, s3=aws.s3, compute=fake_compute([]))
    assert not aws.s3.list_objects_v2(Bucket="specs", Prefix="quarantine/ds/").get("Contents")


def test_the_spec_function_dispatches_manifests_and_their_entries(aws):
    refused = [f"https://127.0.0.1:1/data/f{i}.root" for i in range(2)]  # nothing listens
    put_manifest(aws, refused)
    notification = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "data"}, "object": {"key": "datasets/ds/files.txt"}},
            }
        ]
    }
    batch = {"Records": [{"messageId": "m1", "body": json.dumps(notification)}]}
    assert spec_batch(batch, aws.config, s3=aws.s3, sqs=aws.sqs) == {"batchItemFailures": []}
    entries = sent_entries(aws)
    assert [e["url"] for e in entries] == refused
    # an entry message whose file cannot be read fails alone
    records = [
        {"messageId": f"e{i}", "body": json.dumps({"kind": "mlaas4hep.manifest-entry", **e})}
        for i, e in enumerate(entries)
    ]
    answer = spec_batch({"Records": records}, aws.config, s3=aws.s3, sqs=aws.sqs)
    assert {f["itemIdentifier"] for f in answer["batchItemFailures"]} == {"e0", "e1"}


def test_the_merge_step_follows_a_manifests_entries_in_and_out(aws, shared_data):
    """The merge step adds an entry's FileSpec under its URL and takes the URL out when
    the entry's FileSpecs are deleted, not while one is still there."""
    url = "root://127.0.0.1:1094//data/Zmumu.root"
    spec = dataclasses.replace(compute_file_spec(shared_data / "uproot-Zmumu.root"), source=url)
    key = aws.config.file_spec_key("ds", entry_path("files.txt", url), "adler32-1")
    version = aws.s3.put_object(Bucket="specs", Key=key, Body=spec.to_json().encode())

    def notify(event: str) -> dict:
        body = {
            "Records": [
                {
                    "eventName": event,
                    "s3": {
                        "bucket": {"name": "specs"},
                        # keys come URL-encoded, as S3 sends them
                        "object": {"key": quote_plus(key), "versionId": version.get("VersionId")},
                    },
                }
            ]
        }
        return {"Records": [{"messageId": "m", "body": json.dumps(body)}]}

    assert (
        merge_batch(notify("ObjectCreated:Put"), aws.config, s3=aws.s3)["batchItemFailures"] == []
    )
    assert set(read_dataset_spec(aws.config, "ds", s3=aws.s3)[0].files) == {url}
    # a removal notified while a FileSpec of the entry is still there changes nothing
    merge_batch(notify("ObjectRemoved:Delete"), aws.config, s3=aws.s3)
    assert set(read_dataset_spec(aws.config, "ds", s3=aws.s3)[0].files) == {url}
    aws.s3.delete_object(Bucket="specs", Key=key)
    merge_batch(notify("ObjectRemoved:Delete"), aws.config, s3=aws.s3)
    assert read_dataset_spec(aws.config, "ds", s3=aws.s3)[0].files == {}
