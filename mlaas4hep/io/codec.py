"""The library that inflates ZLIB-compressed baskets: ISA-L when installed, else zlib.

Inflating is most of the CPU time of a pass over a file (0.6 of 1.1 s a 90 MB
paper-layout file with zlib); ISA-L gives the same bytes at ~1.7× the speed, so specs,
training streams and ``/predict_file`` all gain. The choice is made explicitly by the
reading code (:func:`~mlaas4hep.io.tree.open_tree` calls :func:`ensure_inflate_library`
before its first file), not as a side effect of an import.
"""

from __future__ import annotations

import os
import warnings

import uproot

#: ``MLAAS4HEP_ZLIB``: the inflate library for ZLIB baskets, ``isal`` or ``zlib``.
ZLIB_VARIABLE = "MLAAS4HEP_ZLIB"

_CHOSEN: str | None = None


def use_zlib_library(library: str | None = None) -> str:
    """Set the library that inflates ZLIB baskets: ``isal`` (when installed) or ``zlib``.

    uproot inflates every basket through one decompressor object; its library is set
    there, so that writing (``uproot.ZLIB``) keeps zlib and its compression levels.
    ``library`` (or ``MLAAS4HEP_ZLIB``) forces one; the library in use is returned.
    """
    global _CHOSEN
    wanted = library or os.environ.get(ZLIB_VARIABLE) or "isal"
    if wanted not in ("isal", "zlib"):
        raise ValueError(
            f"the ZLIB library ({ZLIB_VARIABLE}) must be 'isal' or 'zlib', not {wanted!r}"
        )
    if wanted == "isal":
        try:
            import isal.isal_zlib  # noqa: F401
        except ImportError:
            wanted = "zlib"
    decompressor = getattr(uproot.compression, "_decompress_ZLIB", None)
    if decompressor is None or not hasattr(decompressor, "library"):
        wanted = "zlib"  # an uproot without the switch inflates with zlib
    else:
        decompressor.library = wanted
    _CHOSEN = wanted
    return wanted


def ensure_inflate_library() -> str:
    """The library chosen by :func:`use_zlib_library`, choosing it (from the environment)
    on the first call. A bad ``MLAAS4HEP_ZLIB`` warns and falls back to zlib rather than
    stopping every read."""
    if _CHOSEN is not None:
        return _CHOSEN
    try:
        return use_zlib_library()
    except ValueError as err:
        warnings.warn(f"{err}; using zlib", stacklevel=2)
        return use_zlib_library("zlib")
