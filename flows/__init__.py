"""Prefect flows: when and where the pipeline runs."""
