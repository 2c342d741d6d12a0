"""bertops: fine-tune BERT-family encoders through DVC, Prefect, Lightning and MLflow."""

__version__ = "0.1.0"
