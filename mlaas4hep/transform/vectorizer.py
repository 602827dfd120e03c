"""The Vectorizer: awkward chunks of flat and jagged branches → padded, masked, normalised X.

Built once from a :class:`~mlaas4hep.spec.documents.DatasetSpec` and a branch selection, it fixes
the feature layout (``Jet_pt[0]``, ``Jet_pt[1]``, …), each jagged branch's padding length
(from the spec's length histogram: its maximum by default, a quantile, or an override)
and the normalisation constants: min/max, mean/std, or robust ones from the quantile
sketches (median and half the 16th-84th percentile range, as weaver-core's ``auto``,
with the normalised value clipped), optionally after clipping each value to quantiles
of its branch (``clip=("p0.1", "p99.9")``). Applied to a chunk it returns ``X`` (float32,
``[n_events, n_features]``), ``mask`` (bool, True where a real value sits) and the
number of values clipped per branch; longer events never crash, they are clipped and
counted. ``inverse`` gives the awkward arrays back.

Its whole configuration is a small JSON-able dict (``to_dict``/``from_dict``), saved in
the model bundle so that serving applies exactly the preprocessing used in training,
without needing the dataset spec or any code from the user.

With an ``image`` (:class:`~mlaas4hep.transform.images.ImageLayout`, the paper's matrix
representation), each event's 2-D histogram of two jagged branches is appended after the
branches' columns as ``image[i,j]`` features (mask True throughout), so that the stream,
the model bundle and serving carry images exactly as they carry any other feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import awkward as ak
import numpy as np

from mlaas4hep.errors import BranchError, ConfigError
from mlaas4hep.io import names
from mlaas4hep.io.branches import select_branches
from mlaas4hep.io.columns import columns_of, flat_values, jagged_parts
from mlaas4hep.spec.documents import DatasetSpec
from mlaas4hep.spec.statistics import BranchStats
from mlaas4hep.transform import kernels
from mlaas4hep.transform.buffers import POOL
from mlaas4hep.transform.images import ImageLayout
from mlaas4hep.transform.kernel_inputs import KernelInputs

Normalization = Literal["minmax", "zscore", "robust", "none"]
NonFinite = Literal["mask", "keep", "zero", "raise"]
_NONFINITE_CODES = {
    "mask": kernels.NONFINITE_MASK,
    "keep": kernels.NONFINITE_KEEP,
    "zero": kernels.NONFINITE_ZERO,
    "raise": kernels.NONFINITE_KEEP,
}
#: Version 2 added value clipping and the bound of normalised values, version 3 the
#: image; a configuration is written with the lowest version that holds it, so that
#: older releases still read what they can apply.
CONFIG_VERSION = 3
_READS = (1, 2, 3)
ROBUST_CLIP = 5.0
_INF = float("inf")


@dataclass(frozen=True)
class FeatureBlock:
    """The columns of one branch: where they start, how many, and how values are scaled."""

    name: str
    kind: str
    dtype: str
    column: int
    length: int
    shift: float
    scale: float
    #: Finite values are clipped to [low, high] before normalisation.
    low: float = -_INF
    high: float = _INF
    #: Normalised values are clipped to [-bound, bound].
    bound: float = _INF

    @property
    def clips(self) -> bool:
        return self.low != -_INF or self.high != _INF or self.bound != _INF

    @property
    def stop(self) -> int:
        return self.column + self.length

    def feature_names(self) -> list[str]:
        if self.kind == "flat":
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(self.length)]


@dataclass(frozen=True)
class InputBranch:
    """A branch the Vectorizer reads: its name, ``flat`` or ``jagged``, and its dtype."""

    name: str
    kind: str
    dtype: str


@dataclass
class VectorizedChunk:
    """The output of the Vectorizer for one chunk."""

    X: np.ndarray
    mask: np.ndarray
    clipped: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.X.shape[0]


def _scale(
    name: str, stats: BranchStats, normalization: str, low: float, high: float
) -> tuple[float, float]:
    """Shift and scale of a branch; ``low``/``high`` are its clip range (infinite: none)."""
    if normalization == "none" or stats.finite == 0:
        return 0.0, 1.0
    if normalization == "minmax":  # the range the values keep after clipping
        lo, hi = max(float(stats.min), low), min(float(stats.max), high)
        return lo, (hi - lo) or 1.0
    if normalization == "zscore":
        return stats.mean, stats.std or 1.0
    if normalization == "robust":
        median, p16, p84 = _quantiles(name, stats, [0.5, 0.16, 0.84], "normalization 'robust'")
        return median, (p84 - p16) / 2 or 1.0
    raise ConfigError(
        f"normalization must be 'minmax', 'zscore', 'robust' or 'none', not {normalization!r}"
    )


def _quantiles(name: str, stats: BranchStats, qs: list[float], use: str) -> list[float]:
    estimates = stats.quantiles(qs)
    if estimates is None:
        raise ConfigError(
            f"{use} needs the quantiles of branch {name!r}, but the dataset spec has no "
            "quantile sketch for it (a file's spec was computed by an older release): "
            "recompute the spec"
        )
    return [float(v) for v in estimates]


def _percentile(rule: object) -> float | None:
    """The fraction of a quantile rule such as ``'p99'`` or ``'p0.1'``; None if it is not one."""
    if isinstance(rule, str) and rule.startswith("p"):
        try:
            q = float(rule[1:]) / 100.0
        except ValueError:
            return None
        if 0.0 <= q <= 1.0:
            return q
    return None


def _clip_range(name: str, stats: BranchStats, clip: Sequence[str] | None) -> tuple[float, float]:
    if clip is None or stats.finite == 0:
        return -_INF, _INF
    qs = [_percentile(rule) for rule in clip] if len(clip) == 2 else [None]
    if None in qs or qs[0] >= qs[1]:  # type: ignore[operator]
        raise ConfigError(
            f"clip must be two quantiles such as ['p0.1', 'p99.9'], lower first, not {clip!r}"
        )
    low, high = _quantiles(name, stats, qs, "clip")  # type: ignore[arg-type]
    return low, high


def _padding_length(name: str, stats: BranchStats, rule: int | str) -> int:
    if isinstance(rule, bool):
        raise ConfigError(f"padding for {name!r} must be an int, 'max' or 'pNN', not {rule!r}")
    if isinstance(rule, int):
        if rule < 0:
            raise ConfigError(f"padding for {name!r} must be >= 0, not {rule}")
        return rule
    if rule == "max":
        return stats.max_length
    q = _percentile(rule)
    if q is not None and q > 0.0:
        return stats.length_quantile(q)
    raise ConfigError(
        f"padding for {name!r} must be an int, 'max' or a quantile such as 'p99', not {rule!r}"
    )


class Vectorizer:
    """Turns chunks of branches into ``X``/``mask`` matrices with a fixed feature layout."""

    def __init__(
        self,
        spec: DatasetSpec,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        *,
        normalization: Normalization = "minmax",
        pad_value: float = 0.0,
        padding: int | str | Mapping[str, int | str] = "max",
        nonfinite: NonFinite = "mask",
        clip: Sequence[str] | None = None,
        robust_clip: float | None = ROBUST_CLIP,
        image: ImageLayout | None = None,
    ) -> None:
        """``clip``: two quantiles (``("p0.1", "p99.9")``) each branch's finite values are
        clipped to before normalisation; ``robust_clip``: with ``normalization="robust"``,
        normalised values are clipped to [-robust_clip, robust_clip] (None: not clipped).
        Both need the spec's quantile sketches, and refuse a branch that lacks one.
        ``image``: an image appended to each event's features (see the module docstring;
        :func:`~mlaas4hep.transform.images.from_spec` makes one); with it, ``include=[]``
        means the image alone."""
        usable = {name: s for name, s in spec.branches.items() if not s.conflict}
        names: list[str] = []
        if image is None or include is None or len(include):
            names = select_branches(
                {**usable, **{n: s for n, s in spec.branches.items() if s.conflict}},
                include,
                exclude,
                where="the dataset spec",
            )
        rules = padding if isinstance(padding, Mapping) else {"*": padding}
        blocks: list[FeatureBlock] = []
        column = 0
        for name in names:
            stats = spec.branch(name)  # a clear error for conflicting branches
            length = 1
            if stats.kind == "jagged":
                rule = _first_rule(name, rules, default="max")
                length = _padding_length(name, stats, rule)
            low, high = _clip_range(name, stats, clip)
            shift, scale = _scale(name, stats, normalization, low, high)
            bound = _INF
            if normalization == "robust" and robust_clip is not None:
                if robust_clip <= 0:
                    raise ConfigError(f"robust_clip must be > 0 or None, not {robust_clip}")
                bound = float(robust_clip)
            blocks.append(
                FeatureBlock(
                    name, stats.kind, stats.dtype, column, length, shift, scale, low, high, bound
                )
            )
            column += length
        if image is not None:
            image = image.at(column)
            for name in image.branches:
                stats = spec.branch(name)
                if stats.kind != "jagged":
                    raise ConfigError(
                        f"image branch {name!r} must be jagged (a list per event), "
                        f"the spec says {stats.kind}"
                    )
        dtypes = {n: spec.branch(n).dtype for n in image.branches} if image else None
        self._init(blocks, normalization, pad_value, nonfinite, image, dtypes)

    def _init(
        self,
        blocks: list[FeatureBlock],
        normalization: str,
        pad_value: float,
        nonfinite: str,
        image: ImageLayout | None = None,
        image_dtypes: Mapping[str, str] | None = None,
    ) -> None:
        if nonfinite not in _NONFINITE_CODES:
            raise ConfigError(
                f"nonfinite must be one of {sorted(_NONFINITE_CODES)}, not {nonfinite!r}"
            )
        if not blocks and image is None:
            raise ConfigError("the Vectorizer needs at least one branch")
        self.blocks = blocks
        self.image = image
        self.normalization = normalization
        self.pad_value = float(pad_value)
        self.nonfinite = nonfinite
        self._by_name = {block.name: block for block in blocks}
        inputs = {b.name: InputBranch(b.name, b.kind, b.dtype) for b in blocks}
        for name in image.branches if image is not None else ():
            dtype = (image_dtypes or {}).get(name, "float32")
            inputs.setdefault(name, InputBranch(name, "jagged", str(dtype)))
        self._inputs = list(inputs.values())

    # --- layout ---------------------------------------------------------------------
    @property
    def inputs(self) -> list[InputBranch]:
        """Every branch a chunk must hold: the blocks' and the image's, once each."""
        return list(self._inputs)

    @property
    def branches(self) -> list[str]:
        return [branch.name for branch in self._inputs]

    @property
    def n_features(self) -> int:
        if self.image is not None:
            return self.image.stop
        return self.blocks[-1].stop

    @property
    def feature_names(self) -> list[str]:
        names = [name for block in self.blocks for name in block.feature_names()]
        return names + (self.image.feature_names() if self.image is not None else [])

    @property
    def image_input(self) -> tuple[int, int, int] | None:
        """Where a model finds the image in ``X``: (first column, bins x, bins y)."""
        if self.image is None:
            return None
        return (self.image.column, *self.image.bins)

    def block(self, name: str) -> FeatureBlock:
        return self._by_name[name]

    # --- forward --------------------------------------------------------------------
    def empty(self, n: int) -> VectorizedChunk:
        """An output for ``n`` events holding only padding (X = pad value, mask False)."""
        out = self.uninitialised(n)
        out.X.fill(self.pad_value)
        out.mask.fill(False)
        return out

    def uninitialised(self, n: int) -> VectorizedChunk:
        """An output for ``n`` events whose values are undefined: for :meth:`transform`
        with ``pad_rows=True`` when every row will be written once."""
        X = POOL.empty((n, self.n_features), np.float32)
        mask = POOL.empty((n, self.n_features), np.bool_)
        return VectorizedChunk(X, mask)

    def transform(
        self,
        chunk: Mapping[str, Any] | ak.Array,
        *,
        out: VectorizedChunk | None = None,
        rows: np.ndarray | None = None,
        pad_rows: bool = False,
    ) -> VectorizedChunk:
        """``X``, ``mask`` and per-branch clip counts for a chunk of events.

        With ``out`` (from :meth:`empty`) and ``rows``, event ``i`` is written to row
        ``rows[i]`` of ``out`` (dropped where negative): the ChunkStream fills a shuffled
        chunk from several files this way without any intermediate copy. With
        ``pad_rows`` the rows written are padded first, in cache, so ``out`` may come
        from :meth:`uninitialised` (the rows no call writes stay undefined).
        """
        columns = columns_of(chunk, self.branches)
        n = _num_events(columns, self.branches)
        if rows is None:
            rows = np.arange(n, dtype=np.int64)
        elif len(rows) != n:
            raise ValueError(f"rows has {len(rows)} entries for {n} events")
        if out is None:  # every row written once: padded by the kernel, in cache
            out, pad_rows = self.uninitialised(int(rows.max()) + 1 if n else 0), True
        if not self.blocks:
            if pad_rows:
                kept = rows[rows >= 0]
                out.X[kept] = self.pad_value
                out.mask[kept] = False
            if self.image is not None:
                self._fill_image(columns, out, rows)
            return out
        lists = KernelInputs()
        for block in self.blocks:
            data = columns[block.name]
            if block.kind == "flat":
                lists.add(block, _flat(block.name, data), None)
            else:
                offsets, content = _jagged(block.name, data)
                lists.add(block, content[int(offsets[0]) : int(offsets[-1])], offsets)
        clipped, bad = kernels.fill_rows(
            out.X, out.mask, np.ascontiguousarray(rows, dtype=np.int64),
            _NONFINITE_CODES[self.nonfinite], pad_rows, np.float32(self.pad_value),
            *lists.arguments(),
        )  # fmt: skip
        if self.image is not None:  # after the kernel, which may pad whole rows
            self._fill_image(columns, out, rows)
        for index, block in enumerate(lists.order):
            if clipped[index]:
                out.clipped[block.name] = out.clipped.get(block.name, 0) + int(clipped[index])
            if bad[index]:
                out.nonfinite[block.name] = out.nonfinite.get(block.name, 0) + int(bad[index])
                if self.nonfinite == "raise":
                    raise ValueError(f"branch {block.name!r} holds {bad[index]} NaN/inf value(s)")
        return out

    __call__ = transform

    def _fill_image(
        self, columns: Mapping[str, Any], out: VectorizedChunk, rows: np.ndarray
    ) -> None:
        image = self.image
        assert image is not None
        pixels, bad = image.pixels(columns)
        for name, count in bad.items():
            out.nonfinite[name] = out.nonfinite.get(name, 0) + count
            if self.nonfinite == "raise":
                raise ValueError(f"image branch {name!r} holds {count} NaN/inf value(s)")
        kept = rows >= 0
        target = rows if kept.all() else rows[kept]
        out.X[target, image.column : image.stop] = pixels if kept.all() else pixels[kept]
        out.mask[target, image.column : image.stop] = True

    # --- inverse --------------------------------------------------------------------
    def inverse(self, X: np.ndarray, mask: np.ndarray) -> dict[str, ak.Array | np.ndarray]:
        """The branches back from ``X``/``mask`` (exact up to float32 and clipping).

        A jagged list ends after its last real value; masked values inside it (non-finite
        input) come back as NaN, as do masked flat values.
        """
        out: dict[str, ak.Array | np.ndarray] = {}
        for block in self.blocks:  # the image is a histogram: it has no inverse
            values = X[:, block.column : block.stop].astype(np.float64) * block.scale
            values += block.shift
            real = mask[:, block.column : block.stop]
            if block.kind == "flat":
                out[block.name] = _restore(values[:, 0], real[:, 0], block.dtype)
                continue
            counts = np.zeros(len(real), dtype=np.int64)
            if block.length:
                reversed_first = np.argmax(real[:, ::-1], axis=1)
                counts = np.where(real.any(axis=1), block.length - reversed_first, 0)
            inside = np.arange(block.length) < counts[:, None]
            content = _restore(values[inside], real[inside], block.dtype)
            out[block.name] = ak.unflatten(content, counts)
        return out

    # --- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The whole configuration as plain JSON-able data (for the model bundle)."""
        clipping = any(b.clips for b in self.blocks)
        out: dict[str, Any] = {
            "config_version": 3 if self.image is not None else 2 if clipping else 1,
            "normalization": self.normalization,
            "pad_value": self.pad_value,
            "nonfinite": self.nonfinite,
            "blocks": [_block_dict(b) for b in self.blocks],
        }
        if self.image is not None:
            out["image"] = {
                **self.image.to_dict(),
                "dtypes": {b.name: b.dtype for b in self._inputs if b.name in self.image.branches},
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vectorizer:
        if data.get("config_version") not in _READS:
            raise ConfigError(
                f"vectorizer config_version {data.get('config_version')!r} is not supported "
                f"(this release reads {', '.join(map(str, _READS))})"
            )
        blocks, column = [], 0
        try:
            for b in data["blocks"]:
                length = int(b["length"]) if b["kind"] == "jagged" else 1
                low, high = b.get("clip") or (None, None)
                bound = b.get("bound")
                blocks.append(
                    FeatureBlock(
                        str(b["name"]),
                        str(b["kind"]),
                        str(b["dtype"]),
                        column,
                        length,
                        float(b["shift"]),
                        float(b["scale"]),
                        -_INF if low is None else float(low),
                        _INF if high is None else float(high),
                        _INF if bound is None else float(bound),
                    )
                )
                column += length
            image = None
            if data.get("image") is not None:
                image = ImageLayout.from_dict(data["image"], column)
            dtypes = data["image"].get("dtypes") if image is not None else None
            self = cls.__new__(cls)
            self._init(
                blocks, data["normalization"], data["pad_value"], data["nonfinite"], image, dtypes
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"malformed vectorizer configuration: {err!r}") from err
        return self

    def __repr__(self) -> str:
        image = f", image {self.image.bins[0]}x{self.image.bins[1]}" if self.image else ""
        return (
            f"Vectorizer({len(self.blocks)} branches{image}, {self.n_features} features, "
            f"normalization={self.normalization!r})"
        )


def _block_dict(b: FeatureBlock) -> dict[str, Any]:
    """One block as JSON data; clip keys only where the block clips (JSON has no inf)."""
    out: dict[str, Any] = {
        "name": b.name,
        "kind": b.kind,
        "dtype": b.dtype,
        "length": b.length,
        "shift": b.shift,
        "scale": b.scale,
    }
    if b.low != -_INF or b.high != _INF:
        out["clip"] = [None if b.low == -_INF else b.low, None if b.high == _INF else b.high]
    if b.bound != _INF:
        out["bound"] = b.bound
    return out


def _first_rule(name: str, rules: Mapping[str, int | str], default: int | str) -> int | str:
    if name in rules:
        return rules[name]
    for pattern, rule in rules.items():
        if names.matches(name, pattern):
            return rule
    return default


def _num_events(columns: Mapping[str, Any], names: Sequence[str]) -> int:
    lengths = {n: len(columns[n]) for n in names}
    distinct = set(lengths.values())
    if len(distinct) > 1:
        detail = ", ".join(f"{n}: {k}" for n, k in lengths.items())
        raise BranchError(f"branches have different numbers of events ({detail})")
    return distinct.pop()


def _flat(name: str, data: Any) -> np.ndarray:
    try:
        values = flat_values(data)
    except (ValueError, TypeError) as err:
        raise BranchError(f"branch {name!r} must hold one number per event: {err}") from err
    if values.ndim != 1 or values.dtype.kind not in "biuf":
        raise BranchError(f"branch {name!r} must hold one number per event")
    return values


def _jagged(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        offsets, content = jagged_parts(data)
    except (ValueError, TypeError) as err:
        raise BranchError(f"branch {name!r} must hold a list of numbers per event") from err
    if content.dtype.kind not in "biuf" or content.ndim != 1:
        raise BranchError(f"branch {name!r} must hold a list of numbers per event")
    return offsets, content


def _restore(values: np.ndarray, real: np.ndarray, dtype: str) -> np.ndarray:
    target = np.dtype(dtype)
    if target.kind == "f":
        restored = values.astype(target)
        restored[~real] = np.nan
        return restored
    if target.kind == "b":
        return values > 0.5
    info = np.iinfo(target)
    return np.clip(np.rint(values), info.min, info.max).astype(target)
