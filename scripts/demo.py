"""The end-to-end demo behind ``make demo``: sample data → specs → mixed, vectorised chunks.

It generates the ttH-like sample, starts a real S3 API server (moto) and a real XRootD
server on loopback ports, uploads the data, computes the DatasetSpec from S3 with
``mlaas4hep specs``, streams the training split over XRootD through the Vectorizer,
draws the input distributions and an event image, prints what it did, and stops every
server it started (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mlaas4hep import extras
from mlaas4hep.cli import main as cli
from mlaas4hep.images import event_images
from mlaas4hep.samples import cached_dataset
from mlaas4hep.servers import MotoServer, XRootDServer
from mlaas4hep.sources import open_tree, read_text
from mlaas4hep.specs import DatasetSpec
from mlaas4hep.stream import ChunkStream
from mlaas4hep.vectorizer import Vectorizer

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def stage(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def plot_inputs(stream: ChunkStream, vectorizer: Vectorizer, out: Path) -> Path:
    plt = extras.pyplot()
    chunk = next(iter(stream))
    names = ["nJet", "Jet_pt[0]", "Jet_btagDeepB[0]", "Jet_btagDeepB[1]", "MET_pt", "HT"]
    names = [n for n in names if n in vectorizer.feature_names][:6]
    figure, axes = plt.subplots(2, 3, figsize=(12, 7))
    for axis, name in zip(axes.flat, names, strict=False):
        column = vectorizer.feature_names.index(name)
        real = chunk.mask[:, column]
        for label, colour, text in ((0, "tab:blue", "background"), (1, "tab:red", "signal")):
            values = chunk.X[real & (chunk.y == label), column]
            axis.hist(
                values,
                bins=40,
                range=(0, 1),
                histtype="step",
                density=True,
                color=colour,
                label=text,
            )
        axis.set_title(name)
        axis.set_xlabel("normalised value")
    axes.flat[0].legend()
    figure.tight_layout()
    path = out / "input-distributions.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def plot_image(url: str, out: Path) -> Path:
    plt = extras.pyplot()
    with open_tree(url) as tree:
        arrays = tree.arrays(["Jet_eta", "Jet_phi", "Jet_pt"], 0, 2000)
    images = event_images(
        arrays,
        "Jet_eta",
        "Jet_phi",
        bins=(24, 24),
        ranges=((-3, 3), (-np.pi, np.pi)),
        weight="Jet_pt",
    )
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    axes[0].imshow(
        images[int(np.argmax(images.sum(axis=(1, 2))))].T,
        origin="lower",
        extent=(-3, 3, -np.pi, np.pi),
    )
    axes[0].set_title("one signal event: jet pT in (eta, phi)")
    axes[1].imshow(images.mean(axis=0).T, origin="lower", extent=(-3, 3, -np.pi, np.pi))
    axes[1].set_title(f"mean of {len(images)} signal events")
    for axis in axes:
        axis.set_xlabel("eta")
        axis.set_ylabel("phi")
    figure.tight_layout()
    path = out / "jet-images.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def run(events: int) -> int:
    data = ROOT / "data" / "demo"
    out = ROOT / "out" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    stage("1/5 sample data")
    files = cached_dataset(data, "tth", events)
    console.print(
        f"{len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB "
        f"in {data.relative_to(ROOT)}"
    )

    export = Path(tempfile.mkdtemp(prefix="mlaas4hep-demo-"))
    export.chmod(0o755)
    try:
        stage("2/5 local servers: S3 (moto) and XRootD on loopback")
        with MotoServer() as moto, XRootDServer(export) as xrootd:
            os.environ.update(moto.env())
            s3 = moto.client("s3")
            s3.create_bucket(Bucket="demo-data")
            for path in files:
                s3.upload_file(str(path), "demo-data", f"datasets/tth/{path.name}")
                shutil.copy(path, export / path.name)
                (export / path.name).chmod(0o644)
            console.print(
                f"S3 API at {moto.endpoint_url} (pid {moto.pid}), "
                f"XRootD at {xrootd.url} (pid {xrootd.pid})"
            )

            stage("3/5 dataset spec from S3: mlaas4hep specs s3://demo-data/datasets/tth/")
            spec_path = out / "dataset-spec.json"
            code = cli(
                ["specs", "s3://demo-data/datasets/tth/", "-o", str(spec_path), "--workers", "2"]
            )
            if code:
                return code
            spec = DatasetSpec.from_json(read_text(str(spec_path)))

            stage("4/5 ChunkStream over XRootD: mixed, shuffled, vectorised")
            urls = [xrootd.url_for(p.name) for p in files]
            vectorizer = Vectorizer(
                spec,
                ["nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepB", "MET_pt", "HT"],
                padding={"Jet_*": "p99"},
            )
            stream = ChunkStream(
                urls,
                labels={"ttH_signal.root": 1, "*": 0},
                vectorizer=vectorizer,
                chunk_size=20_000,
                split="train",
            )
            t0 = time.perf_counter()
            counts, signal = [], []
            for chunk in stream.chunks():
                counts.append(np.bincount(chunk.file_index, minlength=len(files)))
                signal.append(float(chunk.y.mean()))
            elapsed = time.perf_counter() - t0
            total = int(np.sum(counts))
            shown = min(len(counts), 4)
            table = Table("file", *[f"chunk {k}" for k in range(shown)], "all chunks")
            for i, path in enumerate(files):
                table.add_row(
                    path.stem, *[str(c[i]) for c in counts[:shown]], str(sum(c[i] for c in counts))
                )
            table.add_row("signal fraction", *[f"{f:.3f}" for f in signal[:shown]], "")
            console.print(table)
            console.print(
                f"{total} training events in {len(counts)} chunks, {elapsed:.2f} s "
                f"({total / elapsed:,.0f} events/s) over XRootD; {vectorizer.n_features} features "
                f"({', '.join(vectorizer.feature_names[:3])}, …)"
            )

            stage("5/5 plots")
            signal_url = next(u for u in urls if "ttH_signal" in u)
            plots = [
                plot_inputs(stream.with_split("validation"), vectorizer, out),
                plot_image(signal_url, out),
            ]
            stream.close()
    finally:
        shutil.rmtree(export, ignore_errors=True)

    console.rule("[bold green]done")
    console.print(
        f"dataset spec: {spec_path.relative_to(ROOT)} "
        f"({len(spec.files)} files, {spec.entries} events)"
    )
    for plot in plots:
        console.print(f"plot: {plot.relative_to(ROOT)}")
    console.print(
        f"every server started by the demo is stopped; total {time.perf_counter() - started:.1f} s"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events in the sample dataset")
    args = parser.parse_args()
    try:
        return run(args.events)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: servers stopped[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
