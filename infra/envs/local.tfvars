# The local stack: every AWS endpoint is a moto server on the loopback interface.
# scripts/local_stack.py and the integration tests pass the moto port (and the Ray
# address) on the command line: -var aws_endpoint_url=http://127.0.0.1:PORT
environment           = "local"
aws_endpoint_url      = "http://127.0.0.1:5000"
force_destroy_buckets = true
# moto speaks plain HTTP on loopback and enforces bucket policies: a TLS-only policy
# would refuse every request. On AWS it stays on (the default).
tls_only_buckets              = false
event_source_mappings_enabled = false
tracing_mode                  = "PassThrough"
log_retention_days            = 1
cache_expiration_days         = 1

# Short timeouts so that retries and the DLQ are observable within seconds.
functions = {
  spec_file = { memory_size = 1024, timeout = 60, batch_size = 1, maximum_concurrency = 2, max_receive_count = 2, visibility_timeout_seconds = 60 }
  # No batching window for merges: a merge costs ~0.02 s, so waiting a second to batch them
  # only delays the DatasetSpec (it was most of the event path's overhead in make bench-pipeline).
  merge_specs = { memory_size = 512, timeout = 30, batch_size = 10, maximum_batching_window_in_seconds = 0, maximum_concurrency = 2, max_receive_count = 10, visibility_timeout_seconds = 30 }
  retrain     = { memory_size = 256, timeout = 30, batch_size = 10, maximum_batching_window_in_seconds = 1, maximum_concurrency = 1, max_receive_count = 5, visibility_timeout_seconds = 30 }
}

retrain_debounce_seconds = 3
# A submitted job is checked every 5 s (a failed one retried after 5 s, then 10 s).
retrain_retry_seconds = 5

# The serving deployment, applied in full to moto (it does not check that the image
# exists, nor run tasks): the tag only has to be set.
serving_image_tag = "local"
# moto does not implement Application Auto Scaling tags: the service runs min_replicas
# tasks. terraform validate (scripts/check_infra.sh) still covers the autoscaling resources.
serving_enable_autoscaling = false
serving_min_replicas       = 1
serving_max_replicas       = 2
serving = {
  # The shared registry under its own prefix, beside the recipes (<dataset>/train.yaml) and
  # the retraining state: the local stack's `bentoml serve` follows it, as the tasks would.
  models_prefix = "registry/"
  # moto does not store a service's grace period (it reads back as 0, a change on every plan).
  health_check_grace_period_seconds = 0
  force_delete                      = true # the repository may hold images, the token secret goes at once
  container_insights                = false
}
