"""pipeline: the project's stages as functions of plain arguments — build the ranking stage's
parts (BM25, zero-shot vectors) beside the index, and train the ranker. Entry scripts and
benchmarks call these; nothing here imports an entry script."""
