"""From columns to tensors: the Vectorizer and what it is built of.

The compiled kernels that fill rows (:mod:`.kernels`), the buffer pool they write into
(:mod:`.buffers`), the safe expression language for cuts, labels and weights
(:mod:`.expressions`), the Vectorizer itself (:mod:`.vectorizer`) and the paper's
matrix representation (:mod:`.images`).

May import: :mod:`mlaas4hep.io`, :mod:`mlaas4hep.spec`, :mod:`mlaas4hep.errors`,
:mod:`mlaas4hep.extras`.
"""
