"""Computing specs: one streaming pass over a file, many files in parallel processes.

:func:`compute_file_spec` reads a file's selected branches in steps of bounded memory
and sums their :class:`~.statistics.BranchStats`; :func:`compute_dataset_spec` does it
for every file of a dataset, keeps the specs of files whose identity did not change,
and records the files that failed instead of stopping at the first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from mlaas4hep.errors import MlaasError
from mlaas4hep.io.decompression import decompression_pool, decompression_threads
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.names import matches
from mlaas4hep.io.tree import open_tree
from mlaas4hep.spec.documents import DatasetSpec, FileSpec
from mlaas4hep.spec.statistics import array_stats, empty_stats

DEFAULT_STEP_SIZE = "64 MB"


def compute_file_spec(
    url: str | os.PathLike[str],
    tree: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    step_size: int | str = DEFAULT_STEP_SIZE,
    identity: bool = True,
    threads: int | None = None,
) -> FileSpec:
    """The FileSpec of one file, in one streaming pass over the selected numeric branches.

    Memory is bounded by ``step_size`` whatever the size of the file. ``threads``
    decompress a TTree's baskets (None: as the CPUs allow, see
    :func:`~mlaas4hep.io.decompression.decompression_threads`). Raises
    :class:`~mlaas4hep.errors.ReadError` (naming the file) for unreadable files and
    :class:`~mlaas4hep.errors.BranchError` for a selection that matches nothing.
    """
    source = normalize_url(url)
    ident = file_identity(source) if identity else {}
    pool = decompression_pool(decompression_threads(threads))
    with open_tree(source, tree) as root_tree, pool as executor:
        names = root_tree.select(include, exclude)
        infos = {name: root_tree.branches[name] for name in names}
        totals = {name: empty_stats(info) for name, info in infos.items()}
        for chunk in root_tree.iterate(names, step_size=step_size, executor=executor):
            for name, info in infos.items():
                totals[name] = totals[name].merge(array_stats(info, chunk[name]))
        skipped = {n: r for n, r in root_tree.skipped.items() if _selected(n, include, exclude)}
        return FileSpec(
            source=source,
            tree=root_tree.tree_name,
            entries=root_tree.num_entries,
            identity=ident,
            branches=totals,
            skipped=skipped,
        )


def _selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    inc = include if include is not None else ["*"]
    if not any(matches(name, p) for p in inc):
        return False
    return not any(matches(name, p) for p in exclude or [])


@dataclass
class SpecRun:
    """The outcome of a multi-file spec computation: the dataset, the files that failed
    (file → error) and the files whose previous spec was kept unread."""

    dataset: DatasetSpec
    failures: dict[str, str]
    reused: list[str] = field(default_factory=list)


def compute_dataset_spec(
    urls: Sequence[str | os.PathLike[str]],
    tree: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    workers: int = 1,
    strict: bool = False,
    step_size: int | str = DEFAULT_STEP_SIZE,
    progress: Callable[[str, str | None], None] | None = None,
    previous: DatasetSpec | None = None,
    threads: int | None = None,
) -> SpecRun:
    """Specs of many files, in parallel processes, merged into one DatasetSpec.

    With ``previous``, a file whose content identity and branch selection are unchanged
    keeps its FileSpec without being read again (listed in ``reused``).
    ``urls`` may hold directories, globs and ``s3://`` prefixes (see ``expand_sources``).
    A file that cannot be read is reported in ``failures`` (file → error) and the spec of
    the good ones is still returned, unless ``strict``, where the first failure raises.
    ``progress(url, error_or_None)`` is called as each file finishes. ``threads``
    decompress in each process (None: the process's share of the CPUs).

    (One keyword per option of ``mlaas4hep specs``, which calls it: the options are the
    command's, not a group of their own.)
    """
    sources = list(dict.fromkeys(normalize_url(u) for u in expand_sources(urls)))
    specs: list[FileSpec] = []
    failures: dict[str, str] = {}
    reused: list[str] = []
    if previous is not None:
        for url in sources:
            known = previous.files.get(url)
            if known is not None and _unchanged(known, tree, include, exclude):
                specs.append(known)
                reused.append(url)
                if progress is not None:
                    progress(url, None)
        sources = [url for url in sources if url not in reused]

    def record(url: str, outcome: FileSpec | BaseException) -> None:
        if isinstance(outcome, BaseException):
            if strict or not isinstance(outcome, (MlaasError, OSError)):
                raise outcome
            failures[url] = str(outcome)
        else:
            specs.append(outcome)
        if progress is not None:
            progress(url, failures.get(url))

    processes = 1 if workers <= 1 or len(sources) <= 1 else min(workers, len(sources))
    kwargs = {
        "tree": tree,
        "include": include,
        "exclude": exclude,
        "step_size": step_size,
        "threads": decompression_threads(threads, processes),
    }
    if processes == 1:
        for url in sources:
            try:
                outcome: FileSpec | BaseException = compute_file_spec(url, **kwargs)
            except (MlaasError, OSError) as err:
                outcome = err
            record(url, outcome)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(compute_file_spec, url, **kwargs): url for url in sources}
            try:
                for future in as_completed(futures):
                    error = future.exception()
                    record(futures[future], error if error else future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return SpecRun(DatasetSpec(specs), failures, reused)


def _unchanged(
    known: FileSpec,
    tree: str | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> bool:
    """True when a file still has the content and the branch selection of its spec."""
    try:
        if not known.identity or file_identity(known.source) != known.identity:
            return False
        with open_tree(known.source, tree) as root_tree:
            selected = root_tree.select(include, exclude, warn=False)
            return root_tree.tree_name == known.tree and set(selected) == set(known.branches)
    except (MlaasError, OSError):
        return False  # recomputing reports the problem properly
