"""pipeline: the project's stages as functions of plain arguments — build the ranking stage's
parts (BM25, zero-shot vectors) beside the index, train the ranker, and refresh a served run
from its event log (``pipeline.refresh``). Entry scripts and benchmarks call these; nothing here
imports an entry script."""
