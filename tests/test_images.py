"""The matrix representation: one image per event from two jagged branches."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas4hep.errors import BranchError
from mlaas4hep.transform.images import event_images


def test_images_count_and_weight_entries():
    chunk = {
        "eta": ak.Array([[0.1, -2.0, 9.0], [], [0.1]]),
        "phi": ak.Array([[0.1, 3.0, 0.0], [], [-0.1]]),
        "pt": ak.Array([[10.0, 20.0, 30.0], [], [5.0]]),
    }
    images = event_images(chunk, "eta", "phi", bins=(4, 4), ranges=((-2.5, 2.5), (-np.pi, np.pi)))
    assert images.shape == (3, 4, 4) and images.dtype == np.float32
    assert images.sum(axis=(1, 2)).tolist() == [2.0, 0.0, 1.0]  # 9.0 is out of range
    assert images[0, 2, 2] == 1.0 and images[0, 0, 3] == 1.0 and images[2, 2, 1] == 1.0
    weighted = event_images(chunk, "eta", "phi", bins=(4, 4), weight="pt")
    assert weighted.sum(axis=(1, 2)).tolist() == [30.0, 0.0, 5.0]


def test_images_on_real_jets(shared_data):
    import uproot

    arrays = uproot.open(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")["Events"].arrays(
        ["Jet_eta", "Jet_phi", "Jet_pt"]
    )
    images = event_images(
        arrays, "Jet_eta", "Jet_phi", bins=(16, 16), ranges=((-6, 6), (-3.2, 3.2)), weight="Jet_pt"
    )
    np.testing.assert_allclose(
        images.sum(axis=(1, 2)), ak.to_numpy(ak.sum(arrays["Jet_pt"], axis=1)), rtol=1e-4
    )


def test_images_reject_mismatched_branches():
    chunk = {"a": ak.Array([[1.0], [2.0]]), "b": ak.Array([[1.0, 2.0], [2.0]])}
    with pytest.raises(BranchError, match="same number of values"):
        event_images(chunk, "a", "b")
    with pytest.raises(BranchError, match="lacks the branch.*c"):
        event_images(chunk, "a", "c")
    with pytest.raises(ValueError, match="bins"):
        event_images(chunk, "a", "a", bins=(0, 3))
