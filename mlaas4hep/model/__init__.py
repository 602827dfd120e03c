"""Models and model bundles: what training produces and serving loads.

The bundle (:mod:`.bundle`) and its manifest (:mod:`.manifest`: the one reader of
``bundle.json``, the weights' file names), the architectures (:mod:`.architectures`:
the paper's default model, user models from a file), the framework adapters
(:mod:`.frameworks`: weights, predictions), lineage (:mod:`.lineage`), metrics
(:mod:`.metrics`) and plots (:mod:`.plots`).

Sits below both :mod:`mlaas4hep.training` and :mod:`mlaas4hep.serve` and imports
neither. May import: :mod:`mlaas4hep.io`, :mod:`mlaas4hep.spec`,
:mod:`mlaas4hep.transform`, :mod:`mlaas4hep.stream`, :mod:`mlaas4hep.errors`,
:mod:`mlaas4hep.extras`.
"""
