"""Verification: platform and mesh-configuration checks against the API
server, traffic probes, and metric-based canary analysis from Prometheus.
Each check yields verdicts that the ``verify`` stage records as JUnit
testcases; nothing here prints or exits."""
