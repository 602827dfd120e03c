"""The physics of the synthetic samples: per-process generators of event blocks.

Each generator draws one block of events with vectorised numpy from its own
``numpy.random.Generator`` (no Python loop over events): :func:`tth_block` for the
``tth`` preset's processes (:data:`TTH_PROCESSES`), :func:`paper_block` for the paper's
benchmark layout. :mod:`mlaas4hep.local.samples` writes the blocks into files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import awkward as ak
import numpy as np

#: Name of the TTree written in every file.
TREE_NAME = "Events"

#: Events generated and written per ``tree.extend`` call (one basket per branch). The
#: arrays depend on it (each block has its own random stream), so it is fixed by default.
DEFAULT_BLOCK_EVENTS = 100_000

#: Fraction of all ``tth`` events that are signal.
TTH_SIGNAL_FRACTION = 0.10

_ETA_MAX = 2.4
_MAX_JETS = 16

Block = dict[str, np.ndarray | ak.Array]
BlockGenerator = Callable[[np.random.Generator, int], Block]


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


def tth_block(proc: _Process) -> BlockGenerator:
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


def paper_block(signal: bool) -> BlockGenerator:
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
