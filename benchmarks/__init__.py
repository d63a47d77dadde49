"""Benchmarks: quality of every system on one split, latency, throughput, and the report.

``python benchmarks/run.py --data amazon_scientific`` (``make bench``) runs them all in one go;
``benchmarks/index_scale.py`` measures how the FAISS index kinds scale.
"""
