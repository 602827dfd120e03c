"""The registry page: models, versions, aliases and each version's card, as HTML.

``GET /ui`` lists every version (newest first) with its aliases, framework, task, size and
test metrics, and the aliases of every model; ``GET /ui/models/{tag}`` shows one version's
card (its task: the class names, per-class AUCs and confusion matrix of a multiclass
model, the residual metrics of a regression; inputs, metrics, every plot the bundle holds
— ROC, confusion, residuals, loss, inputs —, lineage and promotion history);
``GET /ui/models/{tag}/plots/{file}`` is one of those plots. Server-rendered, one
small stylesheet inline, no script and no build step; every value from a bundle is
escaped (labels, branch names and run names come from whoever uploaded the bundle).
The page is behind the same auth as the read endpoints and shows what the JSON
endpoints show the same caller (redacted without the token).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import quote

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d2430; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #dde2ea;
         vertical-align: top; }
th { background: #f3f5f8; } code { font-size: .9em; }
.alias { background: #e4efff; border-radius: .6rem; padding: 0 .5rem; margin-right: .3rem; }
.plots img { max-width: 32rem; width: 100%; border: 1px solid #dde2ea; margin: .3rem; }
pre { background: #f3f5f8; padding: .6rem; overflow-x: auto; max-height: 24rem; }
nav a { margin-right: 1rem; }
"""
#: Plots shown first on a card, in this order; the bundle's others follow.
PLOT_ORDER = ("roc.png", "confusion.png", "residuals.png", "loss.png", "features.png")
#: What the training job's plots show (the caption under each; others get their name).
PLOT_CAPTIONS = {
    "roc.png": "ROC curve (one vs rest per class for multiclass), test split",
    "confusion.png": "confusion matrix (rows: true class, normalised), test split",
    "residuals.png": "predicted vs true, residuals and resolution, test split",
    "loss.png": "loss and metric per unit, training and validation",
    "features.png": "input features by class (or by range of the regression target)",
}
#: The residual metrics of a regression, as the card explains them.
REGRESSION_METRICS = {
    "rmse": "RMS of the residual (predicted − true), in the target's units",
    "bias": "mean residual, in the target's units",
    "mae": "mean absolute residual, in the target's units",
    "resolution": "half the 16–84 % interval of residual / |true|",
    "loss": "test loss",
}


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><nav><a href='/ui'>mlaas4hep registry</a></nav>{body}</body></html>\n"
    )


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return f"<code>{escape(json.dumps(value, sort_keys=True))}</code>"
    return escape("" if value is None else str(value))


def _aliases(names: Iterable[str]) -> str:
    return "".join(f"<span class='alias'>{escape(a)}</span>" for a in names)


def card_href(tag: str) -> str:
    return f"/ui/models/{quote(tag, safe=':')}"


def index_page(
    models: list[dict[str, Any]], aliases: Mapping[str, Mapping[str, str]], serving: str | None
) -> str:
    """The list of versions and aliases."""
    rows = []
    for model in models:
        metrics = model.get("metrics") or {}
        rows.append(
            [
                f"<a href='{card_href(model['tag'])}'>{escape(model['tag'])}</a>",
                escape(str(model.get("created", ""))[:19].replace("T", " ")),
                _aliases(model.get("aliases") or []),
                escape(str(model.get("framework") or "")),
                escape(str(model.get("task") or "")),
                _value(metrics.get("test_auc")),
                _value(metrics.get("test_loss")),
                escape(
                    ", ".join(f"{k}={v}" for k, v in sorted((model.get("labels") or {}).items()))
                ),
            ]
        )
    header = ["version", "created (UTC)", "aliases", "framework", "task", "test AUC"]
    versions = _table([*header, "test loss", "labels"], rows)
    alias_rows = [
        [escape(name), escape(alias), f"<a href='{card_href(tag)}'>{escape(tag)}</a>"]
        for name, by_alias in sorted(aliases.items())
        for alias, tag in sorted(by_alias.items())
    ]
    serving_line = (
        f"<p>This replica serves <a href='{card_href(serving)}'>{escape(serving)}</a>.</p>"
        if serving
        else "<p>This replica serves no model yet.</p>"
    )
    body = (
        f"<h1>Model registry</h1>{serving_line}"
        f"<h2>Versions ({len(models)})</h2>{versions}"
        f"<h2>Aliases</h2>{_table(['model', 'alias', 'version'], alias_rows)}"
    )
    return _page("mlaas4hep registry", body)


def card_page(card: Mapping[str, Any]) -> str:
    """One version's model card."""
    tag = str(card.get("tag", ""))
    model = card.get("model") or {}
    metrics = card.get("metrics") or {}
    inputs = card.get("inputs") or {}
    lineage = card.get("lineage") or {}
    order = {name: i for i, name in enumerate(PLOT_ORDER)}
    plots = sorted(card.get("plots") or [], key=lambda p: (order.get(p, len(order)), p))
    plot_html = "".join(
        f"<figure><img src='{card_href(tag)}/plots/{quote(p)}' alt='{escape(p)}'>"
        f"<figcaption>{escape(PLOT_CAPTIONS.get(p, p))}</figcaption></figure>"
        for p in plots
    )
    task = card.get("task") or {}
    summary = _table(
        ["", ""],
        [
            ["aliases", _aliases(card.get("aliases") or []) or "none"],
            ["created (UTC)", escape(str(card.get("created", ""))[:19].replace("T", " "))],
            ["architecture", escape(str(model.get("architecture", "")))],
            *(
                [
                    ["task", escape(f"{task.get('kind')} (loss {task.get('loss')})")],
                    ["outputs", escape(", ".join(map(str, task.get("outputs") or [])))],
                ]
                if task.get("kind")
                else []
            ),
            ["framework", escape(str(model.get("framework", "")))],
            ["features", _value(model.get("n_features"))],
            ["size", escape(f"{int(card.get('size_bytes') or 0) / 1e6:.2f} MB")],
            ["labels", _value(card.get("labels") or {})],
        ],
    )
    metric_rows = [
        [escape(str(k)), _value(v)]
        for k, v in sorted(metrics.items())
        if not isinstance(v, (dict, list))
    ]
    branches = _table(
        ["branch", "kind", "dtype", "length"],
        [
            [_value(b.get(k)) for k in ("name", "kind", "dtype", "length")]
            for b in inputs.get("branches") or []
        ],
    )
    promotions = _table(
        ["at", "alias", "previous", "reason"],
        [
            [
                escape(str(p.get("at", ""))[:19].replace("T", " ")),
                escape(str(p.get("alias", ""))),
                escape(str(p.get("previous") or "")),
                _value({k: v for k, v in p.items() if k not in ("at", "alias", "previous", "tag")}),
            ]
            for p in card.get("promotions") or []
        ],
    )
    files = lineage.get("files") or {}
    lineage_rows = [
        ["run", escape(str(lineage.get("run_name") or ""))],
        ["git revision", escape(str(lineage.get("git_revision") or ""))],
        ["files", "<br>".join(escape(str(f)) for f in files) or "none recorded"],
        ["libraries", _value(card.get("framework_versions") or {})],
    ]
    config = escape(json.dumps(lineage.get("config") or {}, indent=1, sort_keys=True))
    body = (
        f"<h1>{escape(tag)}</h1>{summary}"
        f"{_task_section(task)}"
        f"<h2>Metrics</h2>{_table(['metric', 'value'], metric_rows)}"
        f"<h2>Plots</h2><div class='plots'>{plot_html or '<p>none in the bundle</p>'}</div>"
        f"<h2>Inputs</h2><p>normalisation {escape(str(inputs.get('normalization')))}, "
        f"non-finite values: {escape(str(inputs.get('nonfinite')))}</p>{branches}"
        f"<h2>Promotions</h2>{promotions}"
        f"<h2>Lineage</h2>{_table(['', ''], lineage_rows)}"
        f"<h2>Training configuration</h2><pre>{config}</pre>"
    )
    return _page(tag, body)


def _task_section(task: Mapping[str, Any]) -> str:
    """The card's task section: what the model outputs and the task's own test metrics
    (per-class AUCs, accuracy and the confusion matrix; the residual metrics of a
    regression). Empty for a card without a task (one from before tasks)."""
    if not task:
        return ""
    kind = task.get("kind")
    if kind is None:
        return f"<h2>Task</h2><p>unreadable: {escape(str(task.get('error', '')))}</p>"
    metrics = task.get("metrics") or {}
    if kind == "multiclass":
        return _multiclass_section(task, metrics)
    if kind == "regression":
        target = task.get("target") or {}
        rows = [
            [escape(name), _value(metrics.get(name)), escape(meaning)]
            for name, meaning in REGRESSION_METRICS.items()
            if name in metrics
        ]
        return (
            "<h2>Task: regression</h2><p>one value per event (<code>value</code>), in the "
            f"target's units; the model's output is offset {_value(target.get('offset'))} + "
            f"scale {_value(target.get('scale'))} × the network's.</p>"
            f"{_table(['test metric', 'value', 'meaning'], rows)}"
        )
    return (
        "<h2>Task: binary</h2><p>one probability per event (<code>score</code>); test AUC "
        f"{_value(metrics.get('auc'))}.</p>"
    )


def _multiclass_section(task: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    classes = [str(c) for c in task.get("classes") or []]
    per_class = metrics.get("auc_per_class")
    per_class = per_class if isinstance(per_class, Mapping) else {}
    fractions = metrics.get("class_fractions")
    fractions = fractions if isinstance(fractions, Mapping) else {}
    rows = [
        [escape(name), _value(per_class.get(name)), _value(fractions.get(name))] for name in classes
    ]
    head = (
        f"<h2>Task: multiclass</h2><p>one probability per class and event, in the order "
        f"{escape(', '.join(classes))}; test accuracy {_value(metrics.get('accuracy'))}, "
        f"mean one-vs-rest AUC {_value(metrics.get('auc'))}.</p>"
        f"{_table(['class', 'test AUC (one vs rest)', 'test fraction'], rows)}"
    )
    confusion = metrics.get("confusion")
    square = (
        isinstance(confusion, list)
        and len(confusion) == len(classes)
        and all(isinstance(r, list) and len(r) == len(classes) for r in confusion)
    )
    if not square:
        return head if confusion is None else head + f"<p>confusion: {_value(confusion)}</p>"
    matrix = _table(
        ["true \\ predicted", *(escape(c) for c in classes)],
        [[escape(c), *(_value(v) for v in row)] for c, row in zip(classes, confusion, strict=True)],
    )
    return head + f"<h3>Confusion matrix (test, each row normalised to 1)</h3>{matrix}"
