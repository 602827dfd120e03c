"""Local stand-in for Lambda's SQS pollers: polls the queues Terraform created and calls
the handlers Terraform declared.

    python -m functions.local_runtime --outputs .stack/outputs.json [--workers spec_file=2]
    python -m functions.local_runtime --state-dir .stack/terraform

Everything comes from ``terraform output -json`` (the ``functions`` output): the queue
of each function, its handler, its environment, the batch size and batching window, the
concurrency, and the visibility timeout and ``maxReceiveCount`` that the queue itself
enforces. There is no second copy of the wiring here.

The semantics are Lambda's for SQS event sources: a worker receives up to ``batch_size``
messages (waiting at most the batching window for a full batch), calls the handler once
with the batch, deletes the messages that succeeded (every message, unless the handler
raised or reported it in ``batchItemFailures``), and leaves the others to reappear after
the visibility timeout; SQS moves a message to the dead-letter queue after
``maxReceiveCount`` deliveries. Each function runs ``maximum_concurrency`` workers, each
in its own process with the function's environment, as Lambda isolates invocations.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("mlaas4hep.local_runtime")

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_WAIT_SECONDS = 1  # long-poll slice; short so that a stop request is seen quickly
LOG_FILE_VARIABLE = "MLAAS4HEP_RUNTIME_LOG"  # the workers append their logs there if set
SHORT_POLL_SECONDS = 0.05  # pause between short polls in the last second of a window


class LambdaContext:
    """The parts of Lambda's context object that handlers use."""

    def __init__(self, function: Mapping[str, Any]) -> None:
        self.function_name = function["function_name"]
        self.invoked_function_arn = function.get("function_arn", "")
        self.memory_limit_in_mb = int(function.get("memory_size", 128))
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = function.get("log_group_name", "")
        self._deadline = time.monotonic() + float(function.get("timeout", 60))

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_functions(
    outputs: Path | None = None, state_dir: Path | None = None
) -> dict[str, dict[str, Any]]:
    """The ``functions`` output of the applied stack (a saved ``output -json``, or live)."""
    if outputs is not None:
        data = json.loads(Path(outputs).read_text())
        data = data.get("functions", data)
        return data.get("value", data)
    from mlaas4hep.local.terraform import Terraform

    return Terraform(state_dir=state_dir).output()["functions"]


def to_lambda_event(messages: list[dict[str, Any]], function: Mapping[str, Any]) -> dict:
    """SQS messages as the event Lambda passes to an SQS-triggered handler."""
    region = function["queue_arn"].split(":")[3]
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": function["queue_arn"],
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def _receive_batch(sqs: Any, function: Mapping[str, Any], stop: Any) -> list[dict[str, Any]]:
    batch_size = int(function["batch_size"])
    window = float(function.get("maximum_batching_window_in_seconds", 0))
    messages: list[dict[str, Any]] = []
    deadline = None
    while not stop.is_set() and len(messages) < batch_size:
        # Long-poll until the first message; then only for what is left of the window
        # (whole seconds in SQS), so that a batch waits at most the window, as in Lambda.
        wait = POLL_WAIT_SECONDS
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = int(left)
        answer = sqs.receive_message(
            QueueUrl=function["queue_url"],
            MaxNumberOfMessages=min(10, batch_size - len(messages)),
            WaitTimeSeconds=wait,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        received = answer.get("Messages", [])
        messages += received
        if messages and deadline is None:
            deadline = time.monotonic() + window
        elif deadline is not None and not received and wait == 0:
            time.sleep(min(SHORT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    return messages


def invoke(handler: Any, messages: list[dict[str, Any]], function: Mapping[str, Any]) -> set[str]:
    """Call the handler with one batch; the ids of the messages to leave for a retry."""
    event = to_lambda_event(messages, function)
    ids = {m["MessageId"] for m in messages}
    try:
        result = handler(event, LambdaContext(function))
    except Exception:
        log.exception(
            "%s: the handler raised; the whole batch will be retried", function["handler"]
        )
        return ids
    if "ReportBatchItemFailures" not in function.get("function_response_types", []):
        return set()
    failures = (result or {}).get("batchItemFailures", []) if isinstance(result, dict) else []
    failed = {f.get("itemIdentifier") for f in failures}
    if not failed <= ids:  # Lambda treats an unknown identifier as a failed batch
        return ids
    return failed


def worker(name: str, function: dict[str, Any], stop: Any, base_env: dict[str, str]) -> None:
    """One poller: receive, invoke, delete the successes; until ``stop`` is set."""
    os.environ.update(base_env)
    os.environ.update(function.get("environment", {}))
    os.environ.setdefault("AWS_DEFAULT_REGION", function["queue_arn"].split(":")[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ``stop``
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {name}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        filename=os.environ.get(LOG_FILE_VARIABLE) or None,  # stderr by default
    )
    for noisy in ("botocore", "aiobotocore", "boto3", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    module_name, _, attr = function["handler"].rpartition(".")
    handler = getattr(importlib.import_module(module_name), attr)
    import boto3

    sqs = boto3.client("sqs")
    while not stop.is_set():
        try:
            messages = _receive_batch(sqs, function, stop)
            if not messages:
                continue
            failed = invoke(handler, messages, function)
            done = [m for m in messages if m["MessageId"] not in failed]
            for start in range(0, len(done), 10):
                sqs.delete_message_batch(
                    QueueUrl=function["queue_url"],
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(done[start : start + 10])
                    ],
                )
        except Exception:  # keep polling, as Lambda's poller does
            log.exception("%s: poller error", name)
            time.sleep(1)


class LocalRuntime:
    """Workers for every function of the stack, in their own processes.

    ``workers`` overrides the per-function concurrency (e.g. ``{"spec_file": 1}``).
    """

    def __init__(
        self,
        functions: Mapping[str, Mapping[str, Any]],
        workers: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.functions = {name: dict(spec) for name, spec in functions.items()}
        self.workers = {
            name: int((workers or {}).get(name, spec.get("maximum_concurrency", 1)))
            for name, spec in self.functions.items()
        }
        self.env = dict(os.environ if env is None else env)
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._processes: list[Any] = []

    def start(self) -> LocalRuntime:
        for name, function in self.functions.items():
            for _ in range(self.workers[name]):
                process = self._context.Process(
                    target=worker,
                    args=(name, function, self._stop, self.env),
                    name=f"local-runtime-{name}",
                    daemon=True,
                )
                process.start()
                self._processes.append(process)
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def alive(self) -> bool:
        return bool(self._processes) and all(p.is_alive() for p in self._processes)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for process in self._processes:
            process.join(max(0.1, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(2)
        self._processes.clear()

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_workers(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, count = item.partition("=")
        out[name] = int(count)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Poll the stack's SQS queues, call handlers.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--outputs", type=Path, help="saved `terraform output -json`")
    source.add_argument("--state-dir", type=Path, help="state folder of the stack (Terraform)")
    parser.add_argument(
        "--workers", nargs="*", default=[], metavar="NAME=N", help="override concurrency"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    functions = load_functions(args.outputs, args.state_dir)
    runtime = LocalRuntime(functions, _parse_workers(args.workers)).start()
    log.info("local runtime: %s", ", ".join(f"{n} x{c}" for n, c in runtime.workers.items()))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and runtime.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
