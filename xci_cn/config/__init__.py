"""Scenario files: YAML with line marks (loader) and validated models (model)."""
