"""The registry page's HTML: what a bundle's uploader wrote is escaped, never markup."""

from __future__ import annotations

from mlaas4hep.serve.registry_page import card_page, index_page

HOSTILE = "<script>alert(1)</script>"


def test_every_value_from_a_bundle_is_escaped() -> None:
    models = [
        {"tag": "tth:abc", "created": "2026-12-02T05:00:00", "aliases": ["production"],
         "framework": "torch", "metrics": {"test_auc": 0.81}, "labels": {"x": HOSTILE}},
    ]  # fmt: skip
    page = index_page(models, {"tth": {"production": "tth:abc"}}, "tth:abc")
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert "href='/ui/models/tth:abc'" in page and "0.81" in page
    card = {
        "tag": "tth:abc",
        "labels": {"x": HOSTILE},
        "model": {"architecture": HOSTILE},
        "metrics": {"roc_auc": 0.81, HOSTILE: 1},
        "inputs": {"branches": [{"name": HOSTILE, "kind": "flat", "dtype": "f4", "length": 1}]},
        "lineage": {"run_name": HOSTILE, "files": {HOSTILE: {}}, "config": {"a": HOSTILE}},
        "plots": ["features.png", "roc.png", "x'><script>.png"],
        "promotions": [{"at": "2026-12-02T05:00:00", "alias": "production", "why": HOSTILE}],
    }
    page = card_page(card)
    assert HOSTILE not in page and "<script>" not in page
    assert page.index("roc.png") < page.index("features.png")  # the ROC first


def test_a_registry_with_nothing_still_renders() -> None:
    page = index_page([], {}, None)
    assert "serves no model yet" in page and "Versions (0)" in page
    assert "none in the bundle" in card_page({"tag": "x:1"})
