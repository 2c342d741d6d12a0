# The MLflow tracking server with its PostgreSQL and S3 (MinIO) drivers, at the project's MLflow version.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow>=3.17,<4" psycopg2-binary boto3
EXPOSE 5000
