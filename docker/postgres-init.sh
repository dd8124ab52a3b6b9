#!/bin/bash
# Runs once, when the postgres volume is first initialised: the MLflow backend store is
# $POSTGRES_DB (created by the image); the Optuna storage gets its own database, because both
# keep an alembic_version table of their own.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE "${OPTUNA_DB:-optuna}" OWNER "$POSTGRES_USER";
SQL
