"""Seeded synthetic NanoAOD-like ROOT files for tests, benchmarks and the demo.

Why: the library trains models on ROOT files, and its tests, benchmarks and demo need
realistic inputs that anyone can rebuild offline, of any size, without downloading CMS
data. This module writes them with uproot in blocks (``file.mktree`` then
``tree.extend``), so that memory stays bounded whatever the number of events, and draws
every number with vectorised numpy from ``numpy.random.default_rng`` (no Python loop
over events). The same seed gives the same arrays, bit for bit; only the timestamps in
the file headers differ from one run to the next.

Two presets:

``tth`` (:func:`make_tth_dataset`)
    A ttH(H→bb)-like classification data set: one signal file ``ttH_signal.root``
    (10 % of the events) and eight background files, one per process
    (``ttlf``, ``ttcc``, ``ttb``, ``ttbb``, ``ttZ``, ``ttW``, ``tW``, ``ttgamma``), each
    with slightly different jet multiplicity, jet pt spectrum and b/c content. Signal
    has more jets, more b jets and harder jets, but several backgrounds (ttbb, ttZ) look
    much like it, so that no single variable separates the classes (AUC well below 0.9)
    while a simple model on padded jet features reaches an AUC around 0.8-0.9.

``paper`` (:func:`make_paper_dataset`)
    The layout of the MLaaS4HEP paper's benchmark files: 22 flat branches and 52 jagged
    branches in 6 collections (Jet 12, Muon 8, Electron 8, Photon 8, Tau 8, FatJet 8).
    The six counter branches (``nJet``, ``nMuon``, …) come on top and are not counted
    among the 52. Multiplicities and float precision (NanoAOD-style mantissa truncation)
    are tuned so that the files take about 350 bytes per event with ZLIB at uproot's
    default level. Files alternate signal (even index) and background (odd index).

Branches follow NanoAOD naming: a collection ``Jet`` is written from an awkward array
of records zipped per collection (``ak.zip({"pt": ..., "eta": ...})``), which uproot
turns into an ``int32`` counter ``nJet`` and jagged branches ``Jet_pt``, ``Jet_eta``, …
Jagged collections are sorted by pt, descending, within each event. The tree is called
``Events``.

``file_format`` chooses how the events are stored: ``"ttree"`` (the default) or
``"rntuple"``, where the collection ``Jet`` is one field of records, which the library
reads under the same names (``Jet_pt``, ``nJet``: see :mod:`mlaas4hep.io.rntuple`).
Each block is one basket per branch, or one cluster.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.errors import ConfigError
from mlaas4hep.local.generators import (
    DEFAULT_BLOCK_EVENTS,
    TREE_NAME,
    TTH_PROCESSES,
    TTH_SIGNAL_FRACTION,
    Block,
    BlockGenerator,
    paper_block,
    tth_block,
)

#: Level used when none is given: uproot's default for ZLIB (1), ROOT's defaults for
#: LZ4 (4) and ZSTD (5).
DEFAULT_LEVELS = {"zlib": 1, "lz4": 4, "zstd": 5}


#: Compression names accepted by the generators and the CLI.
COMPRESSIONS = ("zlib", "lz4", "zstd", "none")

#: How the events of a file can be stored: a TTree (``mktree``) or an RNTuple.
FILE_FORMATS = ("ttree", "rntuple")


@dataclass(frozen=True)
class SampleFile:
    """One written file: where it is, how many events, its class label and process."""

    path: Path
    events: int
    label: int
    process: str


# ----------------------------------------------------------------------------- helpers


def make_compression(
    name: str | None, level: int | None = None
) -> uproot.compression.Compression | None:
    """The uproot compression object for ``name`` (``zlib``, ``lz4``, ``zstd``, ``none``).

    ``level`` defaults to :data:`DEFAULT_LEVELS`; ``none`` (or ``None``) means uncompressed.
    """
    key = "none" if name is None else str(name).lower()
    if key == "none":
        return None
    if key not in DEFAULT_LEVELS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {name!r}")
    algorithm = {"zlib": uproot.ZLIB, "lz4": uproot.LZ4, "zstd": uproot.ZSTD}[key]
    try:
        return algorithm(DEFAULT_LEVELS[key] if level is None else level)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid {key} compression level {level!r}: {err}") from err


def split_events(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` events into integer parts proportional to ``weights``, each ≥ 1.

    Largest-remainder rounding, so that the parts add up to ``total`` exactly.
    """
    w = np.asarray(weights, dtype=np.float64)
    if total < len(w):
        raise ConfigError(f"need at least {len(w)} events (one per file), got {total}")
    exact = total * w / w.sum()
    parts = np.maximum(np.floor(exact).astype(np.int64), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while parts.sum() != total:  # a few passes over the files, never over events
        j = order[i % len(order)]
        if parts.sum() < total:
            parts[j] += 1
        elif parts[j] > 1:
            parts[j] -= 1
        i += 1
    return [int(p) for p in parts]


def make_tth_dataset(
    out_dir: str | os.PathLike[str],
    n_events: int = 100_000,
    seed: int = 42,
    compression: str | None = "zlib",
    level: int | None = None,
    show_progress: bool = False,
    *,
    block_size: int = DEFAULT_BLOCK_EVENTS,
    file_format: str = "ttree",
    signal_fraction: float = TTH_SIGNAL_FRACTION,
) -> list[SampleFile]:
    """Write the ttH(H→bb)-like data set: ``ttH_signal.root`` and eight background files.

    ``n_events`` is the total over the nine files; ``signal_fraction`` of it (10 % by
    default; the paper's sample has 10.8 %) is signal and the rest is split evenly
    between the backgrounds (``ttlf_bkg.root``, ``ttcc_bkg.root``, …).
    Branches: ``nJet``, ``Jet_{pt,eta,phi,mass,btagDeepB}`` (float32),
    ``Jet_hadronFlavour`` (int32), ``Jet_isTight`` (bool); ``nMuon``,
    ``Muon_{pt,eta,phi,pfRelIso}`` (float32), ``Muon_charge`` (int32); ``nElectron``,
    ``Electron_{pt,eta,phi}`` (float32), ``Electron_charge`` (int32); flat ``MET_pt``,
    ``MET_phi``, ``HT``, ``genWeight`` (float32), ``nPV`` (int32), ``event`` (uint64).
    """
    n_bkg = len(TTH_PROCESSES) - 1
    if not 0.0 < signal_fraction < 1.0:
        raise ValueError(f"signal_fraction must be within (0, 1), not {signal_fraction}")
    weights = [signal_fraction] + [(1.0 - signal_fraction) / n_bkg] * n_bkg
    sizes = split_events(n_events, weights)
    plan = [
        (
            f"{p.name}_signal.root" if p.label else f"{p.name}_bkg.root",
            p.name,
            p.label,
            size,
            tth_block(p),
        )
        for p, size in zip(TTH_PROCESSES, sizes, strict=True)
    ]
    return _write_dataset(
        out_dir, plan, seed, compression, level, show_progress, block_size, file_format
    )


def make_paper_dataset(
    out_dir: str | os.PathLike[str],
    n_events: int = 1_000_000,
    n_files: int = 4,
    seed: int = 42,
    compression: str | None = "zlib",
    level: int | None = None,
    show_progress: bool = False,
    *,
    block_size: int = DEFAULT_BLOCK_EVENTS,
    file_format: str = "ttree",
) -> list[SampleFile]:
    """Write the MLaaS4HEP paper benchmark layout: ``paper_0.root`` … ``paper_{n-1}.root``.

    ``n_events`` is the total, split evenly over ``n_files``. Even-indexed files are
    signal (label 1), odd-indexed ones background (label 0). Each file has the 22 flat
    branches of :data:`PAPER_FLAT` and the 52 jagged branches of
    :data:`PAPER_COLLECTIONS`, plus the six counters ``nJet``, ``nMuon``, … (not counted
    among the 52).
    """
    if n_files < 1:
        raise ConfigError(f"n_files must be at least 1, got {n_files}")
    sizes = split_events(n_events, [1.0] * n_files)
    plan = []
    for i, size in enumerate(sizes):
        signal = i % 2 == 0
        process = "signal" if signal else "background"
        plan.append((f"paper_{i}.root", process, int(signal), size, paper_block(signal)))
    return _write_dataset(
        out_dir, plan, seed, compression, level, show_progress, block_size, file_format
    )


# ----------------------------------------------------------------------------- writing


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[str, int], None]]:
    """A rich progress bar over ``total`` events, or a no-op when not ``enabled``."""
    if not enabled:
        yield lambda _name, _n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("events", total=total)

        def advance(name: str, n: int) -> None:
            bar.update(task, advance=n, description=name)

        yield advance


def _branch_types(block: Block) -> dict[str, object]:
    """The ``mktree`` type of every entry of a block (dtype, or awkward type)."""
    return {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in block.items()}


def _field_types(block: Block) -> dict[str, object]:
    """The ``mkrntuple`` type of every entry of a block (dtype, or awkward type of an
    entry)."""
    return {k: v.type.content if isinstance(v, ak.Array) else v.dtype for k, v in block.items()}


def _write_file(
    path: Path,
    generate: BlockGenerator,
    n_events: int,
    seed_key: Sequence[int],
    first_event: int,
    compression: uproot.compression.Compression | None,
    block_size: int,
    advance: Callable[[str, int], None],
    file_format: str = "ttree",
) -> None:
    """Generate ``n_events`` in blocks and append them to a new ``Events`` TTree (or
    RNTuple, for ``file_format="rntuple"``).

    Block ``b`` draws from ``default_rng([*seed_key, b])``, so that files and blocks have
    independent, reproducible streams; ``event`` numbers run on from ``first_event``.
    """
    with uproot.recreate(path, compression=compression) as file:
        tree: Any = None
        for b, start in enumerate(range(0, n_events, block_size)):
            n = min(block_size, n_events - start)
            block = generate(np.random.default_rng([*seed_key, b]), n)
            block["event"] = np.arange(
                first_event + start, first_event + start + n, dtype=np.uint64
            )
            if tree is None and file_format == "rntuple":
                tree = file.mkrntuple(TREE_NAME, _field_types(block))
            elif tree is None:
                tree = file.mktree(
                    TREE_NAME,
                    _branch_types(block),
                    counter_name=lambda counted: "n" + counted,
                    field_name=lambda outer, inner: f"{outer}_{inner}" if outer else inner,
                )
            tree.extend(block)
            advance(path.name, n)


def _write_dataset(
    out_dir: str | os.PathLike[str],
    plan: Sequence[tuple[str, str, int, int, BlockGenerator]],
    seed: int,
    compression: str | None,
    level: int | None,
    show_progress: bool,
    block_size: int,
    file_format: str = "ttree",
) -> list[SampleFile]:
    """Write every ``(file name, process, label, events, generator)`` of ``plan``."""
    if file_format not in FILE_FORMATS:
        raise ConfigError(
            f"file_format must be one of {', '.join(FILE_FORMATS)}, not {file_format!r}"
        )
    if block_size < 1:
        raise ConfigError(f"block_size must be at least 1, got {block_size}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    codec = make_compression(compression, level)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    firsts = np.cumsum([0] + [p[3] for p in plan]) + 1
    written = []
    with _progress(sum(p[3] for p in plan), show_progress) as advance:
        for i, (name, process, label, n, generate) in enumerate(plan):
            path = out / name
            _write_file(
                path,
                generate,
                n,
                (seed, i),
                int(firsts[i]),
                codec,
                block_size,
                advance,
                file_format,
            )
            written.append(SampleFile(path=path, events=n, label=label, process=process))
    return written


def cached_dataset(
    folder: str | os.PathLike[str],
    preset: str,
    n_events: int,
    n_files: int = 4,
    seed: int = 42,
    file_format: str = "ttree",
) -> list[Path]:
    """A preset written once into ``folder`` and reused by later runs (benchmarks, demo).

    A marker named after the parameters lists the files it wrote; another size, seed or
    format rewrites the folder.
    """
    folder = Path(folder)
    suffix = "" if file_format == "ttree" else f"-{file_format}"
    marker = folder / f"{preset}-{n_events}-{n_files}-{seed}{suffix}.done"
    if not marker.exists():
        print(f"generating the {preset} sample ({file_format}): {n_events:,} events …")
        for stale in folder.glob("*.done"):
            stale.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        if preset == "tth":
            made = make_tth_dataset(
                folder, n_events, seed, show_progress=True, file_format=file_format
            )
        elif preset == "paper":
            made = make_paper_dataset(
                folder, n_events, n_files, seed, show_progress=True, file_format=file_format
            )
        else:
            raise ConfigError(f"preset must be 'tth' or 'paper', not {preset!r}")
        marker.write_text("\n".join(f.path.name for f in made))
    return [folder / name for name in marker.read_text().splitlines()]


def write_labels_file(files: Sequence[SampleFile], path: str | os.PathLike[str]) -> Path:
    """Write a JSON object mapping each file name to its label (1 signal, 0 background).

    Handy for a training configuration that assigns labels per file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mapping = {f.path.name: f.label for f in files}
    target.write_text(json.dumps(mapping, indent=2, sort_keys=True) + "\n")
    return target


def bytes_per_event(files: Sequence[SampleFile]) -> float:
    """Total size on disk of ``files`` divided by their total number of events."""
    events = sum(f.events for f in files)
    return sum(f.path.stat().st_size for f in files) / events if events else math.nan
