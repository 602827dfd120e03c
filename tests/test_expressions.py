"""Safe vectorised expressions for cuts, labels and weights."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas4hep.errors import ExpressionError
from mlaas4hep.transform.expressions import Expression

COLUMNS = {
    "nJet": np.array([0, 2, 3]),
    "Jet_pt": ak.Array([[], [50.0, 20.0], [70.0, 40.0, 35.0]]),
    "Jet_btag": ak.Array([[], [0.9, 0.1], [0.8, 0.7, 0.2]]),
    "MET_pt": np.array([10.0, 60.0, 30.0]),
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nJet >= 2", [False, True, True]),
        ("nJet >= 2 and MET_pt > 40", [False, True, False]),
        ("count(Jet_btag > 0.5) >= 2", [False, False, True]),
        ("sum(Jet_pt)", [0.0, 70.0, 145.0]),
        ("max(Jet_pt) > 60", [False, False, True]),
        ("any(Jet_pt > 45) | (MET_pt < 20)", [True, True, True]),
        ("not (nJet > 0)", [True, False, False]),
        ("sqrt(MET_pt * 4)", [np.sqrt(40), np.sqrt(240), np.sqrt(120)]),
        ("max(MET_pt, 20)", [20.0, 60.0, 30.0]),
        ("0 < nJet <= 2", [False, True, False]),
        ("num(Jet_pt)", [0, 2, 3]),
        ("1.5", [1.5, 1.5, 1.5]),
    ],
)
def test_expressions(text, expected):
    assert Expression(text).evaluate(COLUMNS).tolist() == pytest.approx(expected)


def test_leading_value_is_nan_when_missing():
    out = Expression("Jet_pt[0]").evaluate(COLUMNS)
    assert np.isnan(out[0]) and out[1:].tolist() == [50.0, 70.0]


def test_names_are_listed():
    assert Expression("nJet > 2 and max(Jet_pt) > MET_pt").names == ["nJet", "Jet_pt", "MET_pt"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "not allowed|unknown function"),
        ("nJet.real", "Attribute is not allowed"),
        ("open(1)", "unknown function"),
        ("nJet >", "invalid expression"),
        ("Jet_pt > 30", "gives a list per event"),
        ("Nope > 1", "unknown branch.*Nope"),
        ("Jet_pt[nJet]", "constant index"),
        ("'a' == nJet", "numeric constants"),
        ("", "non-empty"),
    ],
)
def test_bad_expressions_are_rejected_clearly(text, message):
    with pytest.raises(ExpressionError, match=message):
        Expression(text).evaluate(COLUMNS)
