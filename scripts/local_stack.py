"""Start, inspect and stop the local stack (moto, XRootD, Ray head, Terraform, runtime).

    python scripts/local_stack.py up [--detach] [--serve] [--workers spec_file=2]
    python scripts/local_stack.py status
    python scripts/local_stack.py down

``up`` stays in the foreground as the stack's supervisor (Ctrl-C tears it down) unless
``--detach`` is given; either way ``.stack/stack.json`` records the PIDs, ports and
addresses, and ``down`` stops everything ``up`` started, by PID, and forgets the
Terraform state (its resources lived in the stack's own moto server). Logs:
``.stack/supervisor.log``, ``.stack/runtime.log``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlaas4hep.local import stack  # noqa: E402 - after the path set-up


def _up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    existing = stack.read_record(state_dir)
    if existing and stack.pid_alive(existing["supervisor_pid"]):
        print(f"a stack is already up (supervisor pid {existing['supervisor_pid']})")
        return 1
    if args.detach:
        state_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "up", "--state-dir", str(state_dir)]
        for item in args.workers:
            command += ["--workers", item]
        if args.serve:
            command.append("--serve")
        with open(state_dir / "supervisor.log", "ab") as log:
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        while child.poll() is None:
            record = stack.read_record(state_dir)
            if record and record["supervisor_pid"] == child.pid:
                print(json.dumps(record, indent=1))
                return 0
            time.sleep(0.5)
        print((state_dir / "supervisor.log").read_text()[-4000:], file=sys.stderr)
        return 1
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    workers = dict((w.split("=")[0], int(w.split("=")[1])) for w in args.workers)
    local = stack.LocalStack(state_dir, workers=workers, serve=args.serve)
    try:
        record = local.up()
        print(json.dumps(record, indent=1), flush=True)
        print("local stack up; Ctrl-C or `local_stack.py down` to stop", flush=True)
        while not stopping and local.runtime is not None and local.runtime.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("tearing the local stack down", flush=True)
        local.down()
    return 0


def _down(args: argparse.Namespace) -> int:
    if stack.read_record(Path(args.state_dir)) is None:
        print("no local stack is up")
        return 0
    clean = stack.stop_recorded(Path(args.state_dir))
    print("local stack down" if clean else "supervisor was gone: stopped the recorded PIDs")
    return 0


def _status(args: argparse.Namespace) -> int:
    print(json.dumps(stack.status(Path(args.state_dir)), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=str(stack.STACK_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--detach", action="store_true", help="run the supervisor in background")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also bentoml serve, and real retraining jobs (ray_jobs/retrain.py) on the Ray head",
    )
    parser.add_argument(
        "--workers", action="append", default=[], metavar="NAME=N", help="runtime concurrency"
    )
    args = parser.parse_args(argv)
    return {"up": _up, "down": _down, "status": _status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
