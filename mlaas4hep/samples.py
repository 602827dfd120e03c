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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.errors import ConfigError

#: Name of the TTree written in every file.
TREE_NAME = "Events"

#: Events generated and written per ``tree.extend`` call (one basket per branch). The
#: arrays depend on it (each block has its own random stream), so it is fixed by default.
DEFAULT_BLOCK_EVENTS = 100_000

#: Fraction of all ``tth`` events that are signal.
TTH_SIGNAL_FRACTION = 0.10

#: Compression names accepted by the generators and the CLI.
COMPRESSIONS = ("zlib", "lz4", "zstd", "none")

#: Level used when none is given: uproot's default for ZLIB (1), ROOT's defaults for
#: LZ4 (4) and ZSTD (5).
DEFAULT_LEVELS = {"zlib": 1, "lz4": 4, "zstd": 5}

_ETA_MAX = 2.4
_MAX_JETS = 16

Block = dict[str, np.ndarray | ak.Array]
BlockGenerator = Callable[[np.random.Generator, int], Block]


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


def truncate_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits, as NanoAOD does to save space.

    Zeroed low mantissa bits compress well; 23 bits keeps full precision.
    """
    x = np.asarray(x, dtype=np.float32)
    if bits >= 23:
        return x
    drop = 23 - bits
    raw = x.view(np.uint32)
    rounded = (raw + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return rounded.view(np.float32)


def _event_index(counts: np.ndarray) -> np.ndarray:
    """For each object of a flattened collection, the index of its event."""
    return np.repeat(np.arange(len(counts)), counts)


def _local_index(counts: np.ndarray) -> np.ndarray:
    """For each object of a flattened collection, its position within its event."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _pt_order(pt: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Permutation that sorts a flattened collection by pt, descending, within events."""
    return np.lexsort((-pt, _event_index(counts)))


def _eta(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Gaussian pseudorapidities, redrawn uniformly where they fall outside the tracker."""
    eta = rng.normal(0.0, sigma, n)
    outside = np.abs(eta) > _ETA_MAX
    eta[outside] = rng.uniform(-_ETA_MAX, _ETA_MAX, int(outside.sum()))
    return eta.astype(np.float32)


def _phi(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-np.pi, np.pi, n).astype(np.float32)


def _charge(rng: np.random.Generator, n: int) -> np.ndarray:
    return (2 * rng.integers(0, 2, n) - 1).astype(np.int32)


def _sum_per_event(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of a flattened per-object quantity in each event (0 for empty events)."""
    return np.bincount(_event_index(counts), weights=values, minlength=len(counts))


def _collection(counts: np.ndarray, fields: dict[str, np.ndarray]) -> ak.Array:
    """A jagged awkward array of records, which uproot writes as ``n<Name>`` + branches."""
    return ak.unflatten(ak.zip(fields, depth_limit=1), counts)


def _leptons(
    rng: np.random.Generator, counts: np.ndarray, pt_min: float, pt_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """pt (sorted descending within events) and eta of a lepton-like collection."""
    n = int(counts.sum())
    pt = pt_min + rng.exponential(pt_scale, n)
    pt = pt[_pt_order(pt, counts)]
    return pt.astype(np.float32), _eta(rng, n, 1.2)


# ------------------------------------------------------------------------- tth preset


@dataclass(frozen=True)
class _Process:
    """Parameters of one ttH-like physics process (all in GeV where dimensioned)."""

    name: str
    label: int
    jet_mean: float  # mean number of jets (4 + Poisson)
    pt_scale: float  # slope of the exponential jet pt spectrum above 25 GeV
    n_b: int  # b quarks from the hard process
    n_c: int  # c quarks from the hard process
    b_acc: float  # probability that each of them gives a reconstructed jet
    eta_sigma: float
    met_scale: float
    neg_weight: float  # fraction of negative generator weights (NLO-like)
    weight: float  # magnitude of the generator weight


#: Signal first, then the eight backgrounds, one file each.
TTH_PROCESSES: tuple[_Process, ...] = (
    _Process("ttH", 1, 6.5, 48.0, 4, 0, 0.76, 1.15, 48.0, 0.01, 0.51),
    _Process("ttlf", 0, 5.4, 40.0, 2, 0, 0.80, 1.30, 42.0, 0.02, 1.0),
    _Process("ttcc", 0, 5.6, 40.0, 2, 2, 0.78, 1.30, 42.0, 0.02, 1.0),
    _Process("ttb", 0, 5.6, 41.0, 3, 0, 0.75, 1.28, 42.0, 0.02, 1.0),
    _Process("ttbb", 0, 5.9, 42.0, 4, 0, 0.68, 1.25, 44.0, 0.02, 1.0),
    _Process("ttZ", 0, 5.9, 44.0, 4, 0, 0.62, 1.20, 50.0, 0.03, 0.86),
    _Process("ttW", 0, 5.6, 44.0, 2, 1, 0.78, 1.22, 55.0, 0.03, 0.61),
    _Process("tW", 0, 4.7, 38.0, 1, 0, 0.80, 1.35, 45.0, 0.04, 1.0),
    _Process("ttgamma", 0, 5.4, 40.0, 2, 0, 0.80, 1.28, 40.0, 0.03, 0.35),
)


def _tth_flavours(rng: np.random.Generator, proc: _Process, n_jet: np.ndarray) -> np.ndarray:
    """Hadron flavour (5, 4, 0) of each jet: the first n_b are b, the next n_c are c.

    The order is scrambled later, by the pt sort.
    """
    n_b = np.minimum(rng.binomial(proc.n_b, proc.b_acc, len(n_jet)), n_jet)
    n_c = np.minimum(rng.binomial(proc.n_c, proc.b_acc, len(n_jet)), n_jet - n_b)
    local = _local_index(n_jet)
    n_b_j, n_c_j = np.repeat(n_b, n_jet), np.repeat(n_c, n_jet)
    return np.where(local < n_b_j, 5, np.where(local < n_b_j + n_c_j, 4, 0)).astype(np.int32)


def _btag_score(rng: np.random.Generator, flavour: np.ndarray) -> np.ndarray:
    """DeepJet-like b-tag score in [0, 1]: near 1 for b jets, near 0 for light jets."""
    a = np.select([flavour == 5, flavour == 4], [4.0, 1.2], 0.6)
    b = np.select([flavour == 5, flavour == 4], [1.3, 3.0], 5.0)
    return rng.beta(a, b).astype(np.float32)


def _tth_jets(
    rng: np.random.Generator, proc: _Process, n: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Jet multiplicities and flattened jet fields, sorted by pt within each event."""
    n_jet = np.minimum(4 + rng.poisson(proc.jet_mean - 4.0, n), _MAX_JETS).astype(np.int32)
    flavour = _tth_flavours(rng, proc, n_jet)
    # b jets from top and Higgs decays are harder than the radiation jets
    scale = np.where(flavour == 5, 1.25 * proc.pt_scale, proc.pt_scale)
    pt = 25.0 + rng.exponential(scale)
    order = _pt_order(pt, n_jet)
    pt, flavour = pt.astype(np.float32)[order], flavour[order]
    m = len(pt)
    eta = _eta(rng, m, proc.eta_sigma)
    mass_ratio = rng.lognormal(np.log(np.where(flavour == 5, 0.14, 0.11)), 0.3)
    tight = rng.random(m) < 0.985 - 0.04 * np.abs(eta) / _ETA_MAX
    fields = {
        "pt": pt,
        "eta": eta,
        "phi": _phi(rng, m),
        "mass": (pt * mass_ratio).astype(np.float32),
        "btagDeepB": _btag_score(rng, flavour),
        "hadronFlavour": flavour,
        "isTight": tight,
    }
    return n_jet, fields


def _tth_leptons(rng: np.random.Generator, proc: _Process, n: int) -> tuple[ak.Array, ak.Array]:
    """Muons and electrons: one prompt lepton (muon or electron) plus rare extra ones."""
    is_muon = rng.random(n) < 0.5
    n_mu = (is_muon + rng.poisson(0.08, n)).astype(np.int32)
    n_el = (~is_muon + rng.poisson(0.06, n)).astype(np.int32)
    lep_scale = 34.0 if proc.label else 31.0
    mu_pt, mu_eta = _leptons(rng, n_mu, 20.0, lep_scale)
    el_pt, el_eta = _leptons(rng, n_el, 20.0, lep_scale)
    m_mu, m_el = len(mu_pt), len(el_pt)
    muons = _collection(
        n_mu,
        {
            "pt": mu_pt,
            "eta": mu_eta,
            "phi": _phi(rng, m_mu),
            "charge": _charge(rng, m_mu),
            "pfRelIso": rng.exponential(0.04, m_mu).astype(np.float32),
        },
    )
    electrons = _collection(
        n_el,
        {"pt": el_pt, "eta": el_eta, "phi": _phi(rng, m_el), "charge": _charge(rng, m_el)},
    )
    return muons, electrons


def _tth_block(proc: _Process) -> BlockGenerator:
    """A block generator for one ttH-like process."""

    def generate(rng: np.random.Generator, n: int) -> Block:
        n_jet, jet = _tth_jets(rng, proc, n)
        muons, electrons = _tth_leptons(rng, proc, n)
        sign = np.where(rng.random(n) < proc.neg_weight, -1.0, 1.0)
        return {
            "Jet": _collection(n_jet, jet),
            "Muon": muons,
            "Electron": electrons,
            "MET_pt": rng.gamma(2.0, proc.met_scale / 2.0, n).astype(np.float32),
            "MET_phi": _phi(rng, n),
            "HT": _sum_per_event(jet["pt"], n_jet).astype(np.float32),
            "nPV": rng.poisson(32.0, n).astype(np.int32),
            "genWeight": (sign * proc.weight).astype(np.float32),
        }

    return generate


def make_tth_dataset(
    out_dir: str | os.PathLike[str],
    n_events: int = 100_000,
    seed: int = 42,
    compression: str | None = "zlib",
    level: int | None = None,
    show_progress: bool = False,
    *,
    block_size: int = DEFAULT_BLOCK_EVENTS,
) -> list[SampleFile]:
    """Write the ttH(H→bb)-like data set: ``ttH_signal.root`` and eight background files.

    ``n_events`` is the total over the nine files; 10 % of it is signal and the rest is
    split evenly between the backgrounds (``ttlf_bkg.root``, ``ttcc_bkg.root``, …).
    Branches: ``nJet``, ``Jet_{pt,eta,phi,mass,btagDeepB}`` (float32),
    ``Jet_hadronFlavour`` (int32), ``Jet_isTight`` (bool); ``nMuon``,
    ``Muon_{pt,eta,phi,pfRelIso}`` (float32), ``Muon_charge`` (int32); ``nElectron``,
    ``Electron_{pt,eta,phi}`` (float32), ``Electron_charge`` (int32); flat ``MET_pt``,
    ``MET_phi``, ``HT``, ``genWeight`` (float32), ``nPV`` (int32), ``event`` (uint64).
    """
    n_bkg = len(TTH_PROCESSES) - 1
    weights = [TTH_SIGNAL_FRACTION] + [(1.0 - TTH_SIGNAL_FRACTION) / n_bkg] * n_bkg
    sizes = split_events(n_events, weights)
    plan = [
        (
            f"{p.name}_signal.root" if p.label else f"{p.name}_bkg.root",
            p.name,
            p.label,
            size,
            _tth_block(p),
        )
        for p, size in zip(TTH_PROCESSES, sizes, strict=True)
    ]
    return _write_dataset(out_dir, plan, seed, compression, level, show_progress, block_size)


# ----------------------------------------------------------------------- paper preset


#: Flat branches of the ``paper`` preset and their dtypes (22).
PAPER_FLAT = {
    "run": np.uint32,
    "luminosityBlock": np.uint32,
    "event": np.uint64,
    "bunchCrossing": np.uint32,
    "orbitNumber": np.int64,
    "PV_npvs": np.int32,
    "PV_npvsGood": np.int32,
    "PV_x": np.float32,
    "PV_y": np.float32,
    "PV_z": np.float32,
    "Pileup_nTrueInt": np.float32,
    "fixedGridRhoFastjetAll": np.float32,
    "MET_pt": np.float32,
    "MET_phi": np.float32,
    "MET_sumEt": np.float32,
    "MET_significance": np.float32,
    "genWeight": np.float32,
    "LHE_HT": np.float64,
    "LHEWeight_originalXWGTUP": np.float64,
    "HLT_IsoMu24": np.bool_,
    "HLT_Ele32_WPTight_Gsf": np.bool_,
    "HLT_PFHT1050": np.bool_,
}

#: Jagged collections of the ``paper`` preset and their fields (52 branches in all).
PAPER_COLLECTIONS = {
    "Jet": (
        "pt",
        "eta",
        "phi",
        "mass",
        "btagDeepFlavB",
        "btagDeepFlavCvL",
        "qgl",
        "chHEF",
        "neEmEF",
        "jetId",
        "hadronFlavour",
        "passJetIdTight",
    ),
    "Muon": ("pt", "eta", "phi", "mass", "pfRelIso04_all", "dxy", "charge", "tightId"),
    "Electron": ("pt", "eta", "phi", "mass", "pfRelIso03_all", "dxy", "charge", "cutBased"),
    "Photon": ("pt", "eta", "phi", "r9", "sieie", "pfRelIso03_all", "cutBased", "electronVeto"),
    "Tau": ("pt", "eta", "phi", "mass", "dz", "charge", "decayMode", "idDeepTau2017v2p1VSjet"),
    "FatJet": ("pt", "eta", "phi", "mass", "msoftdrop", "tau1", "tau2", "btagHbb"),
}

#: Mean multiplicities (Poisson) of the ``paper`` collections, background / signal.
_PAPER_MEANS = {
    "Jet": (6.0, 6.6),
    "Muon": (1.0, 1.1),
    "Electron": (0.9, 1.0),
    "Photon": (1.4, 1.4),
    "Tau": (0.9, 0.9),
    "FatJet": (0.7, 0.9),
}

#: Mantissa bits kept for float32 kinematics, as in NanoAOD (pt at full precision).
_KIN_BITS = {"pt": 23, "eta": 12, "phi": 12, "mass": 10}
#: Mantissa bits kept for tagger scores, isolations and other per-object floats.
_ID_BITS = 10


def _kinematics(
    rng: np.random.Generator, counts: np.ndarray, pt_min: float, pt_scale: float, mass_ratio: float
) -> dict[str, np.ndarray]:
    """pt (sorted within events), eta, phi and mass of a collection, mantissa-truncated."""
    n = int(counts.sum())
    pt = pt_min + rng.exponential(pt_scale, n)
    pt = pt[_pt_order(pt, counts)]
    mass = pt * rng.lognormal(np.log(mass_ratio), 0.3, n) if mass_ratio else np.zeros(n)
    values = {"pt": pt, "eta": _eta(rng, n, 1.3), "phi": _phi(rng, n), "mass": mass}
    return {k: truncate_mantissa(v, _KIN_BITS[k]) for k, v in values.items()}


def _score(rng: np.random.Generator, n: int, a: float, b: float) -> np.ndarray:
    """A [0, 1] score (tagger output, energy fraction), stored with reduced precision."""
    return truncate_mantissa(rng.beta(a, b, n), _ID_BITS)


def _small_float(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """A positive, exponentially falling quantity (isolation, impact parameter)."""
    return truncate_mantissa(rng.exponential(scale, n), _ID_BITS)


def _paper_jets(
    rng: np.random.Generator, counts: np.ndarray, signal: bool
) -> dict[str, np.ndarray]:
    n = int(counts.sum())
    fields = _kinematics(rng, counts, 20.0, 42.0 if signal else 36.0, 0.12)
    flavour = rng.choice(np.array([0, 4, 5], dtype=np.int32), n, p=[0.7, 0.1, 0.2])
    fields |= {
        "btagDeepFlavB": truncate_mantissa(_btag_score(rng, flavour), _ID_BITS),
        "btagDeepFlavCvL": _score(rng, n, 1.0, 2.5),
        "qgl": _score(rng, n, 2.0, 2.0),
        "chHEF": _score(rng, n, 4.0, 3.0),
        "neEmEF": _score(rng, n, 1.0, 6.0),
        "jetId": rng.choice(np.array([2, 6], dtype=np.int32), n, p=[0.05, 0.95]),
        "hadronFlavour": flavour,
    }
    fields["passJetIdTight"] = fields["jetId"] >= 6
    return fields


def _paper_leptons(
    rng: np.random.Generator, counts: np.ndarray, muon: bool
) -> dict[str, np.ndarray]:
    n = int(counts.sum())
    fields = _kinematics(rng, counts, 10.0, 25.0, 0.0)
    fields["mass"] = np.full(n, 0.10566 if muon else 0.000511, dtype=np.float32)
    iso = "pfRelIso04_all" if muon else "pfRelIso03_all"
    fields |= {iso: _small_float(rng, n, 0.08), "dxy": _small_float(rng, n, 0.005)}
    fields["charge"] = _charge(rng, n)
    if muon:
        fields["tightId"] = rng.random(n) < 0.85
    else:
        fields["cutBased"] = rng.choice(
            np.arange(5, dtype=np.int32), n, p=[0.1, 0.1, 0.2, 0.2, 0.4]
        )
    return fields


def _paper_photons(rng: np.random.Generator, counts: np.ndarray) -> dict[str, np.ndarray]:
    n = int(counts.sum())
    kin = _kinematics(rng, counts, 15.0, 20.0, 0.0)
    return {
        "pt": kin["pt"],
        "eta": kin["eta"],
        "phi": kin["phi"],
        "r9": _score(rng, n, 8.0, 1.5),
        "sieie": _small_float(rng, n, 0.01),
        "pfRelIso03_all": _small_float(rng, n, 0.1),
        "cutBased": rng.integers(0, 4, n).astype(np.int32),
        "electronVeto": rng.random(n) < 0.9,
    }


def _paper_taus(rng: np.random.Generator, counts: np.ndarray) -> dict[str, np.ndarray]:
    n = int(counts.sum())
    fields = _kinematics(rng, counts, 20.0, 25.0, 0.04)
    fields |= {
        "dz": truncate_mantissa(rng.normal(0.0, 0.02, n), _ID_BITS),
        "charge": _charge(rng, n),
        "decayMode": rng.choice(np.array([0, 1, 10, 11], dtype=np.int32), n),
        "idDeepTau2017v2p1VSjet": rng.integers(0, 256, n).astype(np.int32),
    }
    return fields


def _paper_fatjets(
    rng: np.random.Generator, counts: np.ndarray, signal: bool
) -> dict[str, np.ndarray]:
    n = int(counts.sum())
    fields = _kinematics(rng, counts, 200.0, 80.0 if signal else 60.0, 0.25)
    tau1 = rng.beta(2.0, 6.0, n)
    fields |= {
        "msoftdrop": truncate_mantissa(
            fields["mass"] * rng.uniform(0.6, 1.0, n), _KIN_BITS["mass"]
        ),
        "tau1": truncate_mantissa(tau1, _ID_BITS),
        "tau2": truncate_mantissa(tau1 * rng.uniform(0.2, 0.9, n), _ID_BITS),
        "btagHbb": _score(rng, n, 2.0 if signal else 1.0, 4.0),
    }
    return fields


def _paper_flat(
    rng: np.random.Generator, n: int, jet_pt: np.ndarray, n_jet: np.ndarray, signal: bool
) -> dict[str, np.ndarray]:
    """The 22 flat branches (``event`` is filled in by the writer)."""
    npvs = rng.poisson(30.0, n)
    met = rng.gamma(2.0, 25.0 if signal else 20.0, n)
    ht = _sum_per_event(jet_pt.astype(np.float64), n_jet)
    values = {
        "run": np.full(n, 1, dtype=np.uint32),
        "luminosityBlock": (1 + np.arange(n) // 1000).astype(np.uint32),
        "event": np.zeros(n, dtype=np.uint64),
        "bunchCrossing": rng.integers(1, 3565, n),
        "orbitNumber": rng.integers(0, 1 << 40, n),
        "PV_npvs": npvs,
        "PV_npvsGood": npvs - rng.binomial(npvs, 0.05),
        "PV_x": truncate_mantissa(rng.normal(0.01, 0.002, n), 10),
        "PV_y": truncate_mantissa(rng.normal(0.04, 0.002, n), 10),
        "PV_z": truncate_mantissa(rng.normal(0.0, 3.5, n), 10),
        "Pileup_nTrueInt": np.round(rng.normal(32.0, 6.0, n)),
        "fixedGridRhoFastjetAll": truncate_mantissa(rng.gamma(6.0, 3.0, n), 10),
        "MET_pt": truncate_mantissa(met, 10),
        "MET_phi": truncate_mantissa(rng.uniform(-np.pi, np.pi, n), 12),
        "MET_sumEt": truncate_mantissa(ht + rng.gamma(4.0, 100.0, n), 10),
        "MET_significance": truncate_mantissa(rng.gamma(2.0, 2.0, n), 8),
        "genWeight": np.where(rng.random(n) < 0.02, -1.0, 1.0),
        "LHE_HT": np.round(ht * rng.uniform(0.8, 1.1, n), 3),
        "LHEWeight_originalXWGTUP": np.where(rng.random(n) < 0.02, -1.0, 1.0) * 1.2345e3,
        "HLT_IsoMu24": rng.random(n) < 0.3,
        "HLT_Ele32_WPTight_Gsf": rng.random(n) < 0.25,
        "HLT_PFHT1050": ht > 1050.0,
    }
    return {name: np.asarray(values[name]).astype(dtype) for name, dtype in PAPER_FLAT.items()}


def _paper_block(signal: bool) -> BlockGenerator:
    """A block generator for the ``paper`` layout; signal is slightly harder."""
    means = {name: m[int(signal)] for name, m in _PAPER_MEANS.items()}

    def generate(rng: np.random.Generator, n: int) -> Block:
        counts = {name: rng.poisson(mean, n).astype(np.int32) for name, mean in means.items()}
        fields = {
            "Jet": _paper_jets(rng, counts["Jet"], signal),
            "Muon": _paper_leptons(rng, counts["Muon"], muon=True),
            "Electron": _paper_leptons(rng, counts["Electron"], muon=False),
            "Photon": _paper_photons(rng, counts["Photon"]),
            "Tau": _paper_taus(rng, counts["Tau"]),
            "FatJet": _paper_fatjets(rng, counts["FatJet"], signal),
        }
        block: Block = dict(_paper_flat(rng, n, fields["Jet"]["pt"], counts["Jet"], signal))
        for name, columns in PAPER_COLLECTIONS.items():
            block[name] = _collection(counts[name], {c: fields[name][c] for c in columns})
        return block

    return generate


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
        plan.append((f"paper_{i}.root", process, int(signal), size, _paper_block(signal)))
    return _write_dataset(out_dir, plan, seed, compression, level, show_progress, block_size)


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


def _write_file(
    path: Path,
    generate: BlockGenerator,
    n_events: int,
    seed_key: Sequence[int],
    first_event: int,
    compression: uproot.compression.Compression | None,
    block_size: int,
    advance: Callable[[str, int], None],
) -> None:
    """Generate ``n_events`` in blocks and append them to a new ``Events`` tree.

    Block ``b`` draws from ``default_rng([*seed_key, b])``, so that files and blocks have
    independent, reproducible streams; ``event`` numbers run on from ``first_event``.
    """
    with uproot.recreate(path, compression=compression) as file:
        tree = None
        for b, start in enumerate(range(0, n_events, block_size)):
            n = min(block_size, n_events - start)
            block = generate(np.random.default_rng([*seed_key, b]), n)
            block["event"] = np.arange(
                first_event + start, first_event + start + n, dtype=np.uint64
            )
            if tree is None:
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
) -> list[SampleFile]:
    """Write every ``(file name, process, label, events, generator)`` of ``plan``."""
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
            _write_file(path, generate, n, (seed, i), int(firsts[i]), codec, block_size, advance)
            written.append(SampleFile(path=path, events=n, label=label, process=process))
    return written


def cached_dataset(
    folder: str | os.PathLike[str],
    preset: str,
    n_events: int,
    n_files: int = 4,
    seed: int = 42,
) -> list[Path]:
    """A preset written once into ``folder`` and reused by later runs (benchmarks, demo).

    A marker named after the parameters lists the files it wrote; another size or seed
    rewrites the folder.
    """
    folder = Path(folder)
    marker = folder / f"{preset}-{n_events}-{n_files}-{seed}.done"
    if not marker.exists():
        print(f"generating the {preset} sample: {n_events:,} events …")
        for stale in folder.glob("*.done"):
            stale.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        if preset == "tth":
            made = make_tth_dataset(folder, n_events, seed, show_progress=True)
        elif preset == "paper":
            made = make_paper_dataset(folder, n_events, n_files, seed, show_progress=True)
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
