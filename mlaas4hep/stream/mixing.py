"""How many events each file contributes to each chunk, and which split an event is in.

The paper's training flow fills every chunk with events from all files in proportion
n_i/N. Rounding per chunk would drift, or give chunks of the wrong size; here the
events of all files are put in one total order, file i's j-th event at key
(j + 1/2)/n_i (ties by file), and chunk k is the k-th run of ``chunk_size`` events of
that order. The first m events of the order hold, from each file, its Sainte-Laguë
(Webster) apportionment of m seats: exactly m in total, nested as m grows, and within
one event of m·n_i/N (but for rare, slightly larger deviations), so chunks are exact in
size, hold the same mix, and deliver every event once.

Split membership is a hash of (file key, entry, seed): the same on every run, worker
and shard, and independent of the order files are listed in.
"""

from __future__ import annotations

import numpy as np
import xxhash

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def apportion(sizes: np.ndarray, seats: int) -> np.ndarray:
    """Events taken from each file among the first ``seats`` events of the mixed order."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if not 0 <= seats <= total:
        raise ValueError(f"seats must be within [0, {total}], not {seats}")
    if seats == total:
        return sizes.copy()
    # Keys <= seats/total, in exact integer arithmetic (Python ints never overflow).
    taken = np.array(
        [min((2 * seats * int(n) + total) // (2 * total), int(n)) for n in sizes],
        dtype=np.int64,
    )
    safe = np.maximum(sizes, 1)
    while True:
        have = int(taken.sum())
        last = np.where(taken > 0, (2 * taken - 1) / (2.0 * safe), -np.inf)
        nxt = np.where(taken < sizes, (2 * taken + 1) / (2.0 * safe), np.inf)
        # The largest included key (ties: the last file) and the smallest excluded one.
        i_in = len(last) - 1 - int(np.argmax(last[::-1]))
        i_out = int(np.argmin(nxt))
        ordered = last[i_in] < nxt[i_out] or (last[i_in] == nxt[i_out] and i_in < i_out)
        if have == seats and ordered:
            return taken
        if have > seats or (have == seats and not ordered):
            taken[i_in] -= 1
        else:
            taken[i_out] += 1


def chunk_plan(sizes: np.ndarray, chunk_size: int) -> np.ndarray:
    """``plan[k, i]``: the first event of file i (in its own order) that chunk k takes.

    Row ``k + 1`` minus row ``k`` is what chunk k takes from each file; the last row is
    ``sizes``. The last chunk is smaller when ``sum(sizes)`` is not a multiple.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    bounds = [*range(0, total, chunk_size), total]
    if total == 0:
        bounds = [0]
    return np.stack([apportion(sizes, m) for m in bounds]) if bounds else np.zeros((1, 0))


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a file key (independent of Python's hash randomisation)."""
    return xxhash.xxh3_64_intdigest(key.encode())


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform_of_entries(key: str, entries: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic number in [0, 1) per entry of a file, for splits."""
    base = np.uint64((key_hash(key) ^ (seed * 0x2545F4914F6CDD1D)) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(np.asarray(entries, dtype=np.uint64) ^ base)
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


SPLITS = ("train", "validation", "test")


def split_codes(
    key: str, entries: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """The split of each entry of a file, as an index into :data:`SPLITS` (int8): the
    entry's hash number ``u`` falls in ``[edge_i, edge_i+1)`` of the cumulative fractions."""
    u = uniform_of_entries(key, entries, seed)
    inner = np.cumsum(fractions)[:-1]  # the two inner edges; the last split takes the rest
    return np.searchsorted(inner, u, side="right").astype(np.int8)


def split_mask(
    key: str,
    entries: np.ndarray,
    split: str | None,
    fractions: tuple[float, float, float],
    seed: int,
) -> np.ndarray:
    """True for the entries of a file that fall in ``split`` (all of them when None)."""
    if split is None:
        return np.ones(len(entries), dtype=bool)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, not {split!r}")
    return split_codes(key, entries, fractions, seed) == SPLITS.index(split)
