"""Write a seeded synthetic ROOT data set (thin CLI over :mod:`mlaas4hep.local.samples`).

Examples::

    python scripts/make_sample_data.py --preset tth --out data/tth --events 100000
    python scripts/make_sample_data.py --preset paper --out data/paper --events 1000000 \\
        --files 4 --compression zstd --level 5
    python scripts/make_sample_data.py --preset tth --out data/tth-rntuple --format rntuple

It shows a progress bar while writing, then prints each file with its events, size and
bytes per event, and writes ``labels.json`` (file name → label) next to the files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from mlaas4hep.local import samples
except ImportError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlaas4hep.local import samples

from mlaas4hep.errors import MlaasError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tth", "paper"), default="tth")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--events", type=int, default=100_000, help="total events, all files")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--compression", choices=samples.COMPRESSIONS, default="zlib")
    parser.add_argument("--level", type=int, default=None, help="compression level")
    parser.add_argument(
        "--format",
        dest="file_format",
        choices=samples.FILE_FORMATS,
        default="ttree",
        help="store the events as a TTree or an RNTuple",
    )
    parser.add_argument("--files", type=int, default=4, help="number of files (paper preset)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def generate(args: argparse.Namespace) -> list[samples.SampleFile]:
    """Run the chosen preset with the options of ``args``."""
    common = {
        "seed": args.seed,
        "compression": args.compression,
        "level": args.level,
        "show_progress": not args.no_progress,
        "file_format": args.file_format,
    }
    if args.preset == "tth":
        return samples.make_tth_dataset(args.out, args.events, **common)
    return samples.make_paper_dataset(args.out, args.events, n_files=args.files, **common)


def report(files: list[samples.SampleFile], seconds: float) -> None:
    """Print one line per file and a total: events, size, bytes per event."""
    print(f"{'file':<24} {'process':<12} {'label':>5} {'events':>10} {'MiB':>9} {'B/event':>8}")
    for f in files:
        size = f.path.stat().st_size
        line = f"{f.path.name:<24} {f.process:<12} {f.label:>5} {f.events:>10,}"
        print(f"{line} {size / 2**20:>9.2f} {size / f.events:>8.1f}")
    events = sum(f.events for f in files)
    total = sum(f.path.stat().st_size for f in files)
    print(
        f"{'total':<24} {'':<12} {'':>5} {events:>10,} {total / 2**20:>9.2f} "
        f"{samples.bytes_per_event(files):>8.1f}"
    )
    rate = events / max(seconds, 1e-9)
    print(
        f"wrote {len(files)} files, {events:,} events, "
        f"{samples.bytes_per_event(files):.1f} bytes/event "
        f"in {seconds:.1f} s ({rate:,.0f} events/s)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: generate, report, write ``labels.json``; 2 on an invalid request."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        files = generate(args)
    except MlaasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(files, time.perf_counter() - start)
    labels = samples.write_labels_file(files, args.out / "labels.json")
    print(f"labels: {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
