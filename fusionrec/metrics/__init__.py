"""fusionrec metrics: the `evaluate` module in fusionrec/metrics/fusionrec_metrics (also importable directly)."""
