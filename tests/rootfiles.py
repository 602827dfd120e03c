"""Small ROOT files with known content, written by the tests themselves."""

from __future__ import annotations

import struct
from pathlib import Path

import awkward as ak
import numpy as np
import uproot


def jagged(rng: np.random.Generator, n: int, mean: float, scale: float = 30.0) -> ak.Array:
    counts = rng.poisson(mean, n)
    return ak.unflatten(rng.exponential(scale, counts.sum()).astype(np.float32), counts)


def write_events(
    path: Path,
    n: int,
    seed: int,
    *,
    basket: int | None = None,
    extra: dict | None = None,
    tree: str = "Events",
    file_format: str = "ttree",
) -> Path:
    """A NanoAOD-like file: nJet/Jet_pt/Jet_eta jagged, MET_pt/nPV/event flat.

    ``basket`` writes the tree in several extend() calls (several baskets, or clusters);
    ``file_format="rntuple"`` writes the same events as an RNTuple (``Jet`` one field of
    records, which the library reads as ``nJet``/``Jet_pt``/``Jet_eta``).
    """
    rng = np.random.default_rng(seed)
    counts = rng.poisson(4, n)
    data = {
        "Jet": ak.zip(
            {
                "pt": ak.unflatten(rng.exponential(40, counts.sum()).astype(np.float32), counts),
                "eta": ak.unflatten(rng.normal(0, 1.5, counts.sum()).astype(np.float32), counts),
            }
        ),
        "MET_pt": rng.exponential(50, n).astype(np.float32),
        "nPV": rng.poisson(20, n).astype(np.int32),
        "event": np.arange(n, dtype=np.uint64) + np.uint64(seed * 1_000_000),
        "isGood": rng.random(n) < 0.7,
    }
    if extra:
        data.update(extra)
    step = basket or n
    with uproot.recreate(path) as file:
        for start in range(0, n, step):
            part = {k: v[start : start + step] for k, v in data.items()}
            if start == 0 and file_format == "rntuple":
                ttree = file.mkrntuple(tree, {k: _entry_type(v) for k, v in part.items()})
            elif start == 0:
                # mktree: assigning a dict would write an RNTuple with recent uproot.
                ttree = file.mktree(tree, {k: _type(v) for k, v in part.items()})
            ttree.extend(part)
    return path


def _type(array):
    return array.dtype if isinstance(array, np.ndarray) else array.type


def _entry_type(array):
    return array.dtype if isinstance(array, np.ndarray) else array.type.content


def write_uncompressed(path: Path, data: dict, tree: str = "Events") -> Path:
    """``data`` as one basket per branch, uncompressed (so that its bytes can be edited)."""
    with uproot.recreate(path, compression=None) as file:
        file.mktree(tree, {k: _type(v) for k, v in data.items()}).extend(data)
    return path


def corrupt_entry_offsets(
    path: Path, branch: str, entry: int, value: int, tree: str = "Events"
) -> Path:
    """Overwrite, in the file's bytes, where ``entry`` of a jagged ``branch`` starts in its
    (first, uncompressed) basket: the entry offsets a crafted file can hold, which uproot
    takes from the file as they are."""
    with uproot.open(path) as file:
        basket = file[tree][branch].basket(0)
        keylen = basket.member("fKeylen")
        stored = (np.asarray(basket.byte_offsets, dtype=np.int64) + keylen).astype(">i4")
        seek = int(file[tree][branch].member("fBasketSeek")[0])
    data = bytearray(path.read_bytes())
    at = data.find(stored.tobytes(), seek)
    assert at > 0, f"the entry offsets of {branch} were not found in {path}"
    data[at + 4 * entry : at + 4 * entry + 4] = np.array([value + keylen], ">i4").tobytes()
    path.write_bytes(bytes(data))
    return path


def write_stated_totals(path: Path, n: int, seed: int, stated: int | None = 1) -> Path:
    """A file whose branches state ``stated`` uncompressed (``fTotBytes``) and compressed
    (``fZipBytes``) bytes, patched in the bytes on disk, as a hostile file would (``None``:
    the honest file with the same content).

    ``x`` holds float64 zeros (8 bytes an entry that compress to almost nothing), ``pt``
    random float32 lists (that barely compress) with their counter ``npt``; one basket
    each. The tree's metadata is written uncompressed, once, so each branch's pair of
    totals occurs exactly once in the file; the baskets are left as they are.
    """
    rng = np.random.default_rng(seed)
    counts = rng.poisson(5, n)
    pt = ak.unflatten(rng.exponential(30, counts.sum()).astype(np.float32), counts)
    with uproot.recreate(path) as file:
        file.mktree("Events", {"x": np.float64, "pt": pt.type}).extend({"x": np.zeros(n), "pt": pt})
    if stated is None:
        return path
    raw = bytearray(path.read_bytes())
    with uproot.open(path) as file:
        totals = [
            (b.member("fTotBytes"), b.member("fZipBytes"))
            for _, b in file["Events"].iteritems(recursive=True)
        ]
    for pair in totals:
        old, new = struct.pack(">qq", *pair), struct.pack(">qq", stated, stated)
        assert raw.count(old) == 1, f"the totals {pair} of a branch are not unique in the file"
        at = raw.index(old)
        raw[at : at + len(old)] = new
    path.write_bytes(bytes(raw))
    return path
