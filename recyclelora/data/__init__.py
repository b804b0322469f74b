"""Datasets: the embedded benchmark, raw and custom dataset preparation into Parquet manifests, and loading."""
