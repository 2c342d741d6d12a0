"""Lightning training: data pipeline, module, optimizer/schedule, and MLflow metric logging."""
