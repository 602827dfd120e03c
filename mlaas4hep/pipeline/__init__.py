"""The unattended pipeline: S3 notifications in, FileSpecs and DatasetSpecs out, retraining.

The three functions of ``functions/`` (``spec_file``, ``merge_specs``, ``retrain``) are
thin adapters over this package, so that Lambda, the local runtime and the tests run
exactly the same code: the configuration and key layout (:mod:`.config`), S3
notifications (:mod:`.notifications`), SQS
batches (:mod:`.sqs`), the three steps (:mod:`.spec_step`, :mod:`.merge_step`,
:mod:`.retrain_step`), retraining with its promotion gate (:mod:`.retraining`), the one
Ray Jobs API client (:mod:`.jobs_api`) and submitting a training job with a local
working directory (:mod:`.submission`).

boto3 is imported on first use (:mod:`mlaas4hep.extras`); nothing here runs at import.
May import: :mod:`mlaas4hep.training`, :mod:`mlaas4hep.serve` and everything below.
"""
