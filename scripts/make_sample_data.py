"""Write the seeded synthetic sample datasets (see mlaas4hep.samples).

python scripts/make_sample_data.py --preset tth --out data/tth --events 100000
python scripts/make_sample_data.py --preset paper --out data/paper --events 1000000 --files 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlaas4hep.errors import MlaasError
from mlaas4hep.samples import (
    COMPRESSIONS,
    bytes_per_event,
    make_paper_dataset,
    make_tth_dataset,
    write_labels_file,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=["tth", "paper"], default="tth")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--events", type=int, default=100_000, help="total events over all files")
    parser.add_argument("--files", type=int, default=4, help="number of files (paper preset)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--compression", choices=COMPRESSIONS, default="zlib")
    parser.add_argument("--level", type=int, help="compression level")
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.preset == "tth":
            files = make_tth_dataset(
                args.out, args.events, args.seed, args.compression, args.level, True
            )
        else:
            files = make_paper_dataset(
                args.out, args.events, args.files, args.seed, args.compression, args.level, True
            )
    except MlaasError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 1
    labels = write_labels_file(files, args.out / "labels.json")
    table = Table("file", "process", "label", "events", "MB")
    for f in files:
        table.add_row(
            f.path.name,
            f.process,
            str(f.label),
            f"{f.events:,}",
            f"{f.path.stat().st_size / 1e6:.1f}",
        )
    console.print(table)
    console.print(
        f"wrote {len(files)} files, {sum(f.events for f in files):,} events, "
        f"{bytes_per_event(files):.0f} bytes/event ({args.compression}); labels in {labels}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
