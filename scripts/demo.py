"""``make demo``: the whole service on one machine, driven by events alone.

    python scripts/demo.py [--events 100000] [--epochs 2] [--continuous]

See :mod:`mlaas4hep.local.demo` for the stages; everything started is stopped at the end,
on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlaas4hep.local.demo import DemoOptions, run_demo  # noqa: E402 - after the path set-up


def main(argv: list[str] | None = None) -> int:
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=defaults.events, help="sample size")
    parser.add_argument("--heldout", type=int, default=defaults.heldout_events)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--margin", type=float, default=defaults.margin, help="promotion margin")
    parser.add_argument(
        "--continuous", action="store_true", help="then upload a second signal file and retrain"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    args = parser.parse_args(argv)
    options = DemoOptions(
        events=args.events,
        heldout_events=args.heldout,
        epochs=args.epochs,
        margin=args.margin,
        continuous=args.continuous,
        data_dir=ROOT / "data" / "demo",
        out_dir=args.out,
        state_dir=ROOT / ".stack" / "demo",
    )
    return run_demo(options)


if __name__ == "__main__":
    sys.exit(main())
