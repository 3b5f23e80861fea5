"""The stage runner: stage-type registry, run context, state and the DAG engine."""
