"""The BentoML service that serves mlaas4hep model bundles (``serving.service``).

Each worker process runs one BLAS thread unless told otherwise: the workers already
keep every core busy, and a multi-threaded matrix product on busy cores waits
milliseconds for its threads, which costs the per-event path most of its speed. Set
before NumPy is first imported (here, as the package loads, in the ``bentoml serve``
process whose environment the workers inherit).
"""

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
