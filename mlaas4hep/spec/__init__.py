"""Specs: what every branch of a file and of a dataset holds.

Per-branch statistics and their merge (:mod:`.statistics`), the FileSpec and
DatasetSpec documents (:mod:`.documents`), and computing them from ROOT files
(:mod:`.compute`).

May import: :mod:`mlaas4hep.io`, :mod:`mlaas4hep.errors`, :mod:`mlaas4hep.extras`.
"""
