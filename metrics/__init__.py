"""fusionrec metrics: the `evaluate` module under `metrics/fusionrec_metrics`."""
