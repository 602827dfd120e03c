"""Benchmark of the core data path against its baselines, measured side by side in one run.

On the paper-layout preset (22 flat + 52 jagged branches, zlib, 1M events in 4 files by
default), single process unless stated, each line the best of ``--repeat`` runs:

1. bare ``uproot.iterate`` over the same branches: the I/O + decompression limit;
2. the spec pass (``compute_file_spec`` on every file, decompressing on the process's
   share of the CPUs as it does by default)                     goal ≥ 0.9 × (1),
   and the quantile sketches' share of its work (sketching the same values on their
   own, against the pass on one thread: with more, decompression runs beside them)
                                                                goal ≤ 0.1 of it;
3. the Vectorizer on pre-read chunks                            goal ≥ 1,000,000 events/s
   and the bytes of ``X`` and ``mask`` it writes per second against this machine's
   memory-write bandwidth (``ndarray.fill`` of the same fresh arrays, chunk by chunk,
   in the same process)                                         goal ≥ 0.5 ×
   (also printed: the fill of reused buffers, as the Vectorizer's pool hands out);
   and the idiomatic awkward path (pad_none + fill_none + to_numpy per branch)
                                                                goal ≥ 10 × slower;
4. the full ChunkStream (read + mix + vectorize)                goal ≥ 1.0 × (1);
5. ``mlaas4hep specs --workers 2`` against ``--workers 1``, one decompressing thread
   per process (the scaling over processes)                   goal ≥ 1.6 ×;
6. the same events stored as RNTuple: bare ``uproot.iterate`` over its fields, the spec
   pass on it                                                   goal ≥ 0.9 × bare,
   and the ChunkStream on it                                    goal ≥ 1.0 × bare;
   the specs equal the TTree's statistics branch by branch.

Usage: ``python scripts/bench/bench_data.py [--events N] [--files K] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.io.columns import flat_values, jagged_parts
from mlaas4hep.io.tree import open_tree
from mlaas4hep.local.samples import cached_dataset
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec
from mlaas4hep.spec.sketch import QuantileSketch
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.transform.vectorizer import Vectorizer

ROOT = Path(__file__).resolve().parents[2]


REPEAT = 2


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """The best of ``REPEAT`` runs (a shared 2-core machine is noisy) and the result."""
    best, result = float("inf"), None
    for _ in range(REPEAT):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def idiomatic(chunk: dict[str, ak.Array], vectorizer: Vectorizer) -> tuple[np.ndarray, np.ndarray]:
    """What a user writes by hand: pad, fill, convert, normalise, stack, per branch."""
    columns, masks = [], []
    for block in vectorizer.blocks:
        array = chunk[block.name]
        if block.kind == "flat":
            values = ak.to_numpy(array).astype(np.float32)[:, None]
            mask = np.ones_like(values, dtype=bool)
        else:
            padded = ak.pad_none(array, block.length, clip=True)
            mask = ak.to_numpy(~ak.is_none(padded, axis=1))
            values = ak.to_numpy(ak.fill_none(padded, block.shift)).astype(np.float32)
        columns.append((values - block.shift) / block.scale)
        masks.append(mask)
    return np.concatenate(columns, axis=1), np.concatenate(masks, axis=1)


def written_bytes(vectorizer: Vectorizer, chunks: list) -> int:
    """Bytes of ``X`` and ``mask`` the Vectorizer writes for ``chunks``."""
    out = vectorizer(chunks[0])
    per_event = (out.X.nbytes + out.mask.nbytes) // len(out.X)
    return per_event * sum(len(c[vectorizer.branches[0]]) for c in chunks)


def fill_like(vectorizer: Vectorizer, chunks: list) -> None:
    """The memory-write limit of the Vectorizer's output: fresh arrays of its shapes and
    dtypes, chunk by chunk (page faults included), filled by numpy and dropped."""
    shape_of = vectorizer(chunks[0])
    for chunk in chunks:
        n = len(chunk[vectorizer.branches[0]])
        X = np.empty((n, *shape_of.X.shape[1:]), dtype=shape_of.X.dtype)
        X.fill(0)
        mask = np.empty((n, *shape_of.mask.shape[1:]), dtype=shape_of.mask.dtype)
        mask.fill(True)
        del X, mask


def fill_reused(vectorizer: Vectorizer, chunks: list) -> None:
    """The same fill into the buffers the Vectorizer's pool hands out again (no page
    faults): each output dropped before the next, as a training loop drops it."""
    for chunk in chunks:
        vectorizer.empty(len(chunk[vectorizer.branches[0]]))


def line(name: str, seconds: float, events: int, nbytes: int) -> float:
    rate = events / seconds
    print(
        f"  {name:<44} {seconds:8.2f} s {rate:>14,.0f} events/s {nbytes / seconds / 1e6:9.1f} MB/s"
    )
    return rate


def stream_events(paths: list[Path], vectorizer: Vectorizer) -> int:
    """One pass of the ChunkStream (read + mix + vectorize) over ``paths``: its events."""
    with ChunkStream(paths, vectorizer=vectorizer, chunk_size=50_000) as stream:
        return sum(len(c) for c in stream)


def rntuple_lines(
    args: argparse.Namespace, events: int, specs: list, vectorizer: Vectorizer
) -> dict[str, float]:
    """Lines 6: the same sample written as RNTuple (same seed), read three ways."""
    paths = cached_dataset(
        args.data / "rntuple", "paper", args.events, args.files, file_format="rntuple"
    )
    nbytes = sum(p.stat().st_size for p in paths)
    print(f"\nthe same events as RNTuple: {nbytes / 1e6:.0f} MB compressed")

    def bare() -> int:  # every field: what the spec pass reads
        urls = [f"{p}:Events" for p in paths]
        return sum(len(c) for c in uproot.iterate(urls, step_size="64 MB", library="ak"))

    bare()
    out: dict[str, float] = {}
    t_bare, n = timed(bare)
    assert n == events
    out["rn_bare"] = line("RNTuple: bare uproot.iterate", t_bare, events, nbytes)
    t_spec, rn_specs = timed(lambda: [compute_file_spec(p) for p in paths])
    out["rn_spec"] = line("RNTuple: spec pass", t_spec, events, nbytes)
    for ttree, rntuple in zip(specs, rn_specs, strict=True):
        assert set(ttree.branches) == set(rntuple.branches)
        for name, stats in ttree.branches.items():
            other = rntuple.branches[name]
            assert (stats.kind, stats.count, stats.min, stats.max) == (
                other.kind, other.count, other.min, other.max
            ), name  # fmt: skip

    t_stream, n_stream = timed(lambda: stream_events(paths, vectorizer))
    assert n_stream == events
    out["rn_stream"] = line("RNTuple: ChunkStream", t_stream, events, nbytes)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs per line")
    args = parser.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)

    paths = cached_dataset(args.data, "paper", args.events, args.files)
    nbytes = sum(p.stat().st_size for p in paths)
    with open_tree(paths[0]) as tree:
        branches = tree.select()
    events = sum(open_tree(p).num_entries for p in paths)
    print(
        f"{len(paths)} files, {events:,} events, {len(branches)} branches, "
        f"{nbytes / 1e6:.0f} MB compressed ({nbytes / events:.0f} B/event)\n"
    )

    def bare() -> int:
        n = 0
        for chunk in uproot.iterate(
            [f"{p}:Events" for p in paths], branches, step_size="64 MB", library="ak"
        ):
            n += len(chunk)
        return n

    bare()  # warm the page cache and uproot's code paths
    results: dict[str, float] = {}
    t_bare, n = timed(bare)
    assert n == events
    results["bare"] = line("bare uproot.iterate", t_bare, events, nbytes)

    compute_file_spec(paths[0])  # warm uproot's code paths outside the timing
    t_spec, specs = timed(lambda: [compute_file_spec(p) for p in paths])
    results["spec"] = line("spec pass (compute_file_spec)", t_spec, events, nbytes)
    t_work, _ = timed(lambda: [compute_file_spec(p, threads=1) for p in paths])
    line("  the same on one thread (its work)", t_work, events, nbytes)

    spec = DatasetSpec(specs)
    vectorizer = Vectorizer(spec)
    chunks = [
        c for p in paths for c in open_tree(p).iterate(vectorizer.branches, step_size=100_000)
    ]
    vectorizer(chunks[0])  # compile the kernels outside the timing

    # The sketches' work in the spec pass: the same values, sketched on their own.
    values = []
    for chunk in chunks:
        for block in vectorizer.blocks:
            if block.kind == "flat":
                flat = flat_values(chunk[block.name])
            else:
                offsets, content = jagged_parts(chunk[block.name])
                flat = content[offsets[0] : offsets[-1]]
            if flat.dtype != np.bool_ and flat.size:  # booleans are counted, not sketched
                values.append((flat, flat.min(), flat.max()))
    t_sketch, _ = timed(lambda: [QuantileSketch.of(v, lo, hi) for v, lo, hi in values])
    line("  of which quantile sketches", t_sketch, events, nbytes)
    results["sketch_share"] = t_sketch / t_work

    def vectorize_all() -> None:
        for chunk in chunks:
            vectorizer(chunk)  # as a training loop does: use the output, then drop it

    t_vec, _ = timed(vectorize_all)
    results["vectorizer"] = line(
        f"Vectorizer ({vectorizer.n_features} features)", t_vec, events, nbytes
    )
    written = written_bytes(vectorizer, chunks)
    t_fill, _ = timed(lambda: fill_like(vectorizer, chunks))
    t_warm, _ = timed(lambda: fill_reused(vectorizer, chunks))
    print(
        f"  memory-write bandwidth, ndarray.fill of the same X and mask: fresh arrays"
        f" {written / t_fill / 1e9:.2f} GB/s, reused buffers {written / t_warm / 1e9:.2f} GB/s;"
        f" the Vectorizer writes {written / t_vec / 1e9:.2f} GB/s"
    )
    results["write_share"] = t_fill / t_vec

    sample = chunks[: max(1, len(chunks) // 10)]
    sample_events = sum(len(c[vectorizer.branches[0]]) for c in sample)
    t_idiom, _ = timed(lambda: [idiomatic(c, vectorizer) for c in sample])
    results["idiomatic"] = line("idiomatic awkward pad/fill/to_numpy", t_idiom, sample_events, 0)
    got, want = vectorizer(sample[0]), idiomatic(sample[0], vectorizer)
    assert np.array_equal(got.mask, want[1]) and np.allclose(
        got.X[got.mask], want[0][want[1]], atol=1e-5
    )

    t_stream, n_stream = timed(lambda: stream_events(paths, vectorizer))
    assert n_stream == events
    results["stream"] = line("ChunkStream (read + mix + vectorize)", t_stream, events, nbytes)

    cli = [
        sys.executable,
        "-m",
        "mlaas4hep.cli",
        "specs",
        *map(str, paths),
        "-o",
        str(args.data / "bench-spec.json"),
    ]
    for workers in (1, 2):
        command = [*cli, "--workers", str(workers), "--threads", "1"]
        seconds, _ = timed(lambda c=command: subprocess.run(c, check=True, capture_output=True))
        results[f"workers{workers}"] = line(
            f"mlaas4hep specs --workers {workers} --threads 1", seconds, events, nbytes
        )

    results.update(rntuple_lines(args, events, specs, vectorizer))

    checks = [
        ("spec pass / bare uproot.iterate", results["spec"] / results["bare"], 0.9),
        ("spec pass's work / its quantile sketches", 1 / results["sketch_share"], 10.0),
        ("Vectorizer events/s / 1,000,000", results["vectorizer"] / 1e6, 1.0),
        ("Vectorizer / idiomatic awkward", results["vectorizer"] / results["idiomatic"], 10.0),
        ("Vectorizer writes / memory-write bandwidth", results["write_share"], 0.5),
        ("ChunkStream / bare uproot.iterate", results["stream"] / results["bare"], 1.0),
        ("specs --workers 2 / 1 (one thread each)", results["workers2"] / results["workers1"], 1.6),
        ("RNTuple spec pass / bare uproot.iterate", results["rn_spec"] / results["rn_bare"], 0.9),
        (
            "RNTuple ChunkStream / bare uproot.iterate",
            results["rn_stream"] / results["rn_bare"],
            1.0,
        ),
        ("Vectorizer / the paper's 1.2k events/s", results["vectorizer"] / 1.2e3, 1.0),
    ]
    print("\nratios (measured in this run)")
    failed = 0
    for name, ratio, goal in checks:
        ok = ratio >= goal
        failed += not ok
        print(f"  {name:<44} {ratio:10.2f}   goal ≥ {goal:<5} {'ok' if ok else 'MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
