"""pipeline: the stages as functions of a config, called by entry scripts and benchmarks
(DESIGN.md). ``pipeline.refresh``: the incremental refresh of a served run from its event log."""
