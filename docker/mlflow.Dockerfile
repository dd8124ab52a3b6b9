# The MLflow tracking server: the client's MLflow version exactly (docker/constraints.txt) with
# the PostgreSQL driver for its backend store.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
COPY docker/constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt mlflow psycopg2-binary \
    && mlflow --version

EXPOSE 5000
CMD ["mlflow", "server", "--help"]
