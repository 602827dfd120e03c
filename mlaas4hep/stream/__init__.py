"""Streams of training data: events mixed from many files, in chunks and batches.

The paper's mixing (:mod:`.mixing`: exact apportionment and hash-based splits), the
ChunkStream (:mod:`.chunks`), its chunks and batches and the model inputs of a batch
(:mod:`.batches`), labels per file (:mod:`.labels`), the stream over staged copies
(:mod:`.staged`) and the tf.data / torch adapters (:mod:`.adapters`).

May import: :mod:`mlaas4hep.io`, :mod:`mlaas4hep.spec`, :mod:`mlaas4hep.transform`,
:mod:`mlaas4hep.errors`, :mod:`mlaas4hep.extras`.
"""
