"""The matrix representation: one image per event from two jagged branches."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep.errors import BranchError, ConfigError
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


# --- edges, periodicity, non-finite values --------------------------------------------


def _image(x, y, **options):
    chunk = {"x": ak.Array(x), "y": ak.Array(y)}
    return event_images(chunk, "x", "y", **options)


def test_both_ends_of_phi_are_inside_also_in_float32():
    """float32(+pi) is a little above math.pi and float32(-pi) a little below -pi: they land
    in the last and the first bin, periodic or not."""
    for dtype in (np.float64, np.float32):
        phi = np.array([np.pi, -np.pi], dtype=dtype)
        eta = np.zeros(2, dtype=dtype)
        chunk = {"eta": ak.Array([eta]), "phi": ak.Array([phi])}
        for periodic in (None, (False, False)):
            image = event_images(chunk, "eta", "phi", bins=(2, 4), periodic=periodic)[0]
            assert image.sum() == 2.0
            assert image[1, 3] == 1.0 and image[1, 0] == 1.0, (dtype, periodic)


def test_a_periodic_axis_wraps_and_a_plain_one_drops():
    inside = _image([[0.0, 0.0]], [[0.5, -3.0]], bins=(1, 8), ranges=((-1, 1), (-np.pi, np.pi)))
    wrapped = _image(
        [[0.0, 0.0]],
        [[0.5 + 2 * np.pi, -3.0 - 4 * np.pi]],
        bins=(1, 8),
        ranges=((-1, 1), (-np.pi, np.pi)),
    )
    np.testing.assert_array_equal(inside, wrapped)
    plain = _image([[0.0]], [[4.0]], bins=(1, 8), ranges=((-1, 1), (-np.pi, np.pi)),
                   periodic=(False, False))  # fmt: skip
    assert plain.sum() == 0.0


def test_nonfinite_entries_are_left_out_and_counted():
    from mlaas4hep.transform.images import layout

    image = layout("x", "y", weight="w", bins=(2, 2), ranges=((0, 1), (0, 1)))
    columns = {
        "x": ak.Array([[0.1, np.nan, 0.9], [0.2]]),
        "y": ak.Array([[0.1, 0.2, np.inf], [0.7]]),
        "w": ak.Array([[2.0, 1.0, 1.0], [np.nan]]),
    }
    pixels, bad = image.pixels(columns)
    assert bad == {"x": 1, "y": 1, "w": 1}
    assert pixels.tolist() == [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.floats(-5, 5), st.floats(-20, 20)), max_size=6), max_size=8),
    st.integers(1, 9),
    st.integers(1, 9),
)
def test_periodic_images_equal_those_of_values_wrapped_by_hand(events, nx, ny):
    """Every finite entry lands in exactly one pixel when y is periodic (x inside its
    range), and the image is the one of the y values reduced to [-pi, pi) by hand."""
    x = [[min(max(a, -2.5), 2.5) for a, _ in e] for e in events]
    y = [[b for _, b in e] for e in events]
    wrapped = [[(b + np.pi) % (2 * np.pi) - np.pi for b in e] for e in y]
    options = {"bins": (nx, ny), "ranges": ((-2.5, 2.5), (-np.pi, np.pi))}
    image = _image(x, y, **options) if events else None
    if image is None:
        return
    np.testing.assert_array_equal(image.sum(axis=(1, 2)), [len(e) for e in events])
    by_hand = _image(x, wrapped, **options)
    # a value within rounding of an edge may fall on either side of it: compare per row
    np.testing.assert_array_equal(image.sum(axis=2), by_hand.sum(axis=2))


# --- images through the Vectorizer -----------------------------------------------------


def test_the_vectorizer_appends_the_image_after_the_flat_features(hzz):
    from mlaas4hep.transform.images import from_spec
    from mlaas4hep.transform.vectorizer import Vectorizer

    spec, chunk = hzz
    image = from_spec(spec, "Jet_Px", "Jet_Py", weight="Jet_E", bins=(6, 5))
    v = Vectorizer(spec, ["NJet", "MET_px"], image=image)
    assert v.n_features == 2 + 30 and v.image_input == (2, 6, 5)
    assert v.feature_names[:3] == ["NJet", "MET_px", "image[0,0]"]
    assert v.feature_names[-1] == "image[5,4]"
    assert [b.name for b in v.inputs] == ["NJet", "MET_px", "Jet_Px", "Jet_Py", "Jet_E"]
    assert {b.kind for b in v.inputs[2:]} == {"jagged"}
    out = v(chunk)
    expected = event_images(chunk, "Jet_Px", "Jet_Py", bins=(6, 5), weight="Jet_E",
                            ranges=image.ranges)  # fmt: skip
    np.testing.assert_allclose(out.X[:, 2:].reshape(-1, 6, 5), expected / image.scale, rtol=1e-6)
    assert out.mask[:, 2:].all()
    assert float(np.max(ak.max(chunk["Jet_E"], axis=None))) == pytest.approx(image.scale)
    # saved with the model and read back: the same X, bit for bit
    again = Vectorizer.from_dict(v.to_dict())
    assert v.to_dict()["config_version"] == 3 and again.inputs == v.inputs
    assert np.array_equal(again(chunk).X, out.X)
    # rows: events scattered into a bigger output, one dropped
    rows = np.full(len(out.X), -1, dtype=np.int64)
    rows[:3] = [4, 0, 2]
    part = v.transform(chunk, out=v.empty(5), rows=rows)
    np.testing.assert_array_equal(part.X[[4, 0, 2]], out.X[:3])
    assert not part.mask[[1, 3]].any()


def test_an_image_alone_and_the_errors_that_name_the_branch(hzz):
    from mlaas4hep.transform.images import from_spec
    from mlaas4hep.transform.vectorizer import Vectorizer

    spec, chunk = hzz
    alone = Vectorizer(spec, [], image=from_spec(spec, "Jet_Px", "Jet_Py", bins=(4, 4)))
    assert alone.n_features == 16 and alone.blocks == []
    assert alone(chunk).X.sum() == pytest.approx(float(ak.sum(ak.num(chunk["Jet_Px"]))))
    with pytest.raises(ConfigError, match="'NJet' must be jagged"):
        Vectorizer(spec, [], image=from_spec(spec, "NJet", "Jet_Py"))
    with pytest.raises(BranchError, match="Jet_Nope"):
        from_spec(spec, "Jet_Nope", "Jet_Py")
    with pytest.raises(ConfigError, match="bins"):
        from_spec(spec, "Jet_Px", "Jet_Py", bins=(0, 4))
    with pytest.raises(BranchError, match="Muon_Px.*same number"):
        Vectorizer(spec, [], image=from_spec(spec, "Muon_Px", "Jet_Py"))(chunk)
