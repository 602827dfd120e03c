"""The options of a ChunkStream, in three small groups instead of one long signature.

:class:`Selection` says what each event carries and which events are kept (labels per
file or from an expression, weights, a cut); :class:`Split` which events form the
train/validation/test splits; :class:`Reading` how files are read (block size, read-
ahead, threads). Each is a frozen dataclass with the defaults a physicist would pick,
so ``ChunkStream(files, vectorizer=v, selection=Selection(cut="nJet >= 4"))`` reads as
what it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlaas4hep.errors import ConfigError
from mlaas4hep.stream.mixing import SPLITS

DEFAULT_BLOCK_SIZE = 50_000


@dataclass(frozen=True)
class Selection:
    """What each event carries and which events are kept.

    ``labels``: file (URL, name or glob) → label; or ``label``: an expression giving
    the label per event (not both). ``weight``: an expression giving a weight per event.
    ``cut``: an expression that keeps the events for which it is true.
    """

    labels: Mapping[str, float] | None = None
    label: str | None = None
    weight: str | None = None
    cut: str | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and self.label is not None:
            raise ConfigError("give labels per file or a label expression, not both")


@dataclass(frozen=True)
class Split:
    """The deterministic train/validation/test split by a hash of (file, entry).

    ``name``: the split a stream delivers (``train``, ``validation``, ``test``; None:
    every event); ``fractions``: the three shares; ``seed``: the hash's seed.
    """

    name: str | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS} or None, not {self.name!r}")
        fractions = tuple(float(f) for f in self.fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
            raise ConfigError(
                f"fractions must be three non-negative numbers summing to 1: {self.fractions}"
            )
        object.__setattr__(self, "fractions", fractions)


@dataclass(frozen=True)
class Reading:
    """How files are read: blocks of at least ``block_size`` entries (aligned with the
    baskets), ``prefetch`` chunks made ahead, ``open_workers`` files opened in parallel,
    ``decompression_threads`` per stream (None: up to 4, as the CPUs allow)."""

    block_size: int = DEFAULT_BLOCK_SIZE
    prefetch: int = 1
    open_workers: int = 8
    decompression_threads: int | None = None

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ConfigError("block_size must be positive")
