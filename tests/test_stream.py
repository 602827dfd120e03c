"""ChunkStream: proportional mix, every event once, splits, shards, labels, batches."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from rootfiles import write_events

from mlaas4hep.errors import BranchError, ConfigError, ExpressionError, ReadError
from mlaas4hep.spec.compute import compute_dataset_spec
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.stream.options import Reading, Selection, Split
from mlaas4hep.transform.vectorizer import Vectorizer

SIZES = [1200, 3300, 700, 4800]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    return [
        str(write_events(folder / f"f{i}.root", n, seed=i, basket=500)) for i, n in enumerate(SIZES)
    ]


@pytest.fixture(scope="module")
def vectorizer(files):
    return Vectorizer(compute_dataset_spec(files).dataset, ["Jet_*", "MET_pt", "nPV", "isGood"])


def _ids(chunks):
    return np.concatenate([np.stack([c.file_index, c.entry], axis=1) for c in chunks])


def test_every_event_once_and_in_proportion(files, vectorizer):
    stream = ChunkStream(files, vectorizer=vectorizer, chunk_size=1000, reading=Reading(600))
    chunks = list(stream)
    assert [len(c) for c in chunks] == [1000] * 10
    ids = _ids(chunks)
    assert len(np.unique(ids, axis=0)) == sum(SIZES) == len(ids)
    for chunk in chunks:
        per_file = np.bincount(chunk.file_index, minlength=4)
        assert np.all(np.abs(per_file - 1000 * np.array(SIZES) / sum(SIZES)) < 2)
        assert chunk.X.shape == (len(chunk), vectorizer.n_features)


def test_last_chunk_is_smaller(files, vectorizer):
    stream = ChunkStream(files, vectorizer=vectorizer, chunk_size=3000)
    sizes = [len(c) for c in stream]
    assert sizes == [3000, 3000, 3000, 1000] and stream.num_chunks == 4


def test_rows_match_the_source_events(files, vectorizer):
    stream = ChunkStream(files, vectorizer=vectorizer, chunk_size=777, branches=["MET_pt", "event"])
    for chunk in stream:
        met = vectorizer.inverse(chunk.X, chunk.mask)["MET_pt"]
        np.testing.assert_allclose(met, chunk.arrays["MET_pt"].to_numpy(), rtol=1e-5)
        expected = chunk.file_index.astype(np.uint64) * 1_000_000 + chunk.entry.astype(np.uint64)
        assert np.array_equal(chunk.arrays["event"].to_numpy(), expected)


def test_shuffle_is_seeded_and_changes_per_epoch(files, vectorizer):
    def order(seed, epoch):
        s = ChunkStream(
            files, vectorizer=vectorizer, chunk_size=1000, reading=Reading(600), seed=seed
        )
        return _ids(list(s.chunks(epoch)))

    assert np.array_equal(order(1, 0), order(1, 0))
    assert not np.array_equal(order(1, 0), order(1, 1))
    assert not np.array_equal(order(1, 0), order(2, 0))
    unshuffled = ChunkStream(files, vectorizer=vectorizer, chunk_size=1000, shuffle=False)
    first = next(iter(unshuffled))
    assert np.all(np.diff(first.entry[first.file_index == 0]) > 0)


def test_split_is_disjoint_complete_and_stable(files, vectorizer):
    base = ChunkStream(
        files, vectorizer=vectorizer, chunk_size=900, split=Split(fractions=(0.6, 0.3, 0.1))
    )
    parts = {s: _ids(list(base.with_split(s))) for s in ("train", "validation", "test")}
    together = np.concatenate(list(parts.values()))
    assert len(np.unique(together, axis=0)) == len(together) == sum(SIZES)
    assert len(parts["train"]) == pytest.approx(0.6 * sum(SIZES), rel=0.05)
    reseeded = ChunkStream(
        files,
        vectorizer=vectorizer,
        chunk_size=400,
        seed=9,
        split=Split("test", fractions=(0.6, 0.3, 0.1)),
    )
    assert set(map(tuple, _ids(list(reseeded)))) == set(map(tuple, parts["test"]))
    table = base.split_table()  # what a script outside mlaas4hep reads the split from
    assert [len(table[f]) for f in files] == SIZES
    for code, name in enumerate(("train", "validation", "test")):
        exported = {(i, e) for i, f in enumerate(files) for e in np.flatnonzero(table[f] == code)}
        assert exported == set(map(tuple, parts[name].tolist()))


@pytest.mark.parametrize("count", [2, 3])
def test_shards_keep_the_mix_and_cover_everything(files, vectorizer, count):
    stream = ChunkStream(
        files, vectorizer=vectorizer, chunk_size=500, reading=Reading(1000), split=Split("train")
    )
    shards = [stream.shard(i, count) for i in range(count)]
    ids = [_ids(list(s)) for s in shards]
    together = np.concatenate(ids)
    assert len(np.unique(together, axis=0)) == len(together)
    assert set(map(tuple, together)) == set(map(tuple, _ids(list(stream))))
    whole_mix = np.array(list(stream.events_per_file.values())) / stream.num_events
    for shard in shards:
        mix = np.array(list(shard.events_per_file.values())) / shard.num_events
        np.testing.assert_allclose(mix, whole_mix, atol=0.01)
    sizes = [s.num_events for s in shards]
    assert max(sizes) - min(sizes) <= 4 * len(files)


def test_labels_per_file_and_from_expressions(files, vectorizer):
    labelled = ChunkStream(
        {files[0]: 1, files[1]: 0, files[2]: 0, files[3]: 1}, vectorizer=vectorizer
    )
    for chunk in labelled:
        assert np.array_equal(chunk.y, np.isin(chunk.file_index, [0, 3]).astype(np.float32))
    by_name = ChunkStream(
        files, selection=Selection(labels={"f1.root": 1, "*.root": 0}), vectorizer=vectorizer
    )
    chunk = next(iter(by_name))
    assert np.array_equal(chunk.y, (chunk.file_index == 1).astype(np.float32))
    from_branch = ChunkStream(
        files,
        selection=Selection(label="nJet >= 4", weight="MET_pt / 10"),
        branches=["nJet", "MET_pt"],
    )
    chunk = next(iter(from_branch))
    assert np.array_equal(chunk.y, (chunk.arrays["nJet"].to_numpy() >= 4).astype(np.float32))
    np.testing.assert_allclose(chunk.w, chunk.arrays["MET_pt"].to_numpy() / 10, rtol=1e-6)
    with pytest.raises(ConfigError, match="no label given"):
        ChunkStream(files, selection=Selection(labels={"f1.root": 1}), vectorizer=vectorizer)


def test_cut_keeps_only_selected_events_once(files, vectorizer):
    stream = ChunkStream(
        files,
        vectorizer=vectorizer,
        selection=Selection(cut="nJet >= 4 and MET_pt > 20"),
        branches=["nJet", "MET_pt"],
        chunk_size=1000,
    )
    chunks = list(stream)
    nj = np.concatenate([c.arrays["nJet"].to_numpy() for c in chunks])
    assert nj.min() >= 4
    ids = _ids(chunks)
    assert len(np.unique(ids, axis=0)) == len(ids)
    assert 0.2 * sum(SIZES) < len(ids) < 0.8 * sum(SIZES)


def test_batches_cross_chunk_boundaries(files, vectorizer):
    stream = ChunkStream(
        files, selection=Selection(labels={"*": 0}), vectorizer=vectorizer, chunk_size=1000
    )
    sizes = [len(b) for b in stream.batches(384)]
    assert sum(sizes) == sum(SIZES) and set(sizes[:-1]) == {384}
    assert sizes[-1] == sum(SIZES) % 384
    assert all(len(b) == 384 for b in stream.batches(384, drop_last=True))


def test_bad_inputs_fail_before_streaming(files, vectorizer, tmp_path):
    with pytest.raises(BranchError, match="Nope.*not found in .*f0.root"):
        _ = ChunkStream(files, branches=["Nope"]).num_events
    with pytest.raises(ReadError, match="missing.root"):
        _ = ChunkStream([*files, str(tmp_path / "missing.root")], vectorizer=vectorizer).num_events
    with pytest.raises(ExpressionError, match="invalid expression"):
        ChunkStream(files, vectorizer=vectorizer, selection=Selection(cut="nJet >"))
    with pytest.raises(ConfigError, match="split"):
        ChunkStream(files, vectorizer=vectorizer, split=Split("training"))
    with pytest.raises(ConfigError, match="fractions"):
        ChunkStream(files, vectorizer=vectorizer, split=Split(fractions=(0.5, 0.1, 0.1)))


def test_torch_dataset_yields_tensors_lazily(files, vectorizer):
    torch = pytest.importorskip("torch")
    stream = ChunkStream(
        files,
        selection=Selection(labels={"f0.root": 1, "*": 0}),
        vectorizer=vectorizer,
        chunk_size=1000,
    )
    dataset = stream.to_torch(256)
    total = 0
    for features, labels in torch.utils.data.DataLoader(dataset, batch_size=None):
        assert features.dtype == torch.float32 and features.shape[1] == vectorizer.n_features
        total += len(labels)
    assert total == sum(SIZES)
    loader = torch.utils.data.DataLoader(stream.to_torch(256), batch_size=None, num_workers=2)
    assert sum(len(y) for _, y in loader) == sum(SIZES)


def test_core_import_loads_no_framework():
    import subprocess

    code = (
        "import mlaas4hep.stream.chunks, mlaas4hep.stream.adapters, sys; "
        "print(any(m in sys.modules for m in ('torch', 'tensorflow', 'ray', 'bentoml', 'boto3')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_tf_dataset_yields_batches(files, vectorizer):
    tf = pytest.importorskip("tensorflow")
    stream = ChunkStream(
        files,
        selection=Selection(labels={"f0.root": 1, "*": 0}, weight="MET_pt"),
        vectorizer=vectorizer,
        chunk_size=1000,
    )
    dataset = stream.to_tf_dataset(500)
    seen = 0
    for features, labels, weights in dataset:
        assert features.dtype == tf.float32 and features.shape[1] == vectorizer.n_features
        assert labels.shape == weights.shape
        seen += int(labels.shape[0])
    assert seen == sum(SIZES)
    masked = ChunkStream(
        files, selection=Selection(labels={"*": 0}), vectorizer=vectorizer
    ).to_tf_dataset(256, with_mask=True)
    features, _ = next(iter(masked))
    assert set(features) == {"features", "mask"} and features["mask"].dtype == tf.bool
