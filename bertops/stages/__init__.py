"""The pipeline's stage functions. `dvc.yaml` calls them through `bertops stage <name>`, and the Prefect flow
runs those DVC stages: one code path."""
