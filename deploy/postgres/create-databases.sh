#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d):
# one role and one database each for the Dagster instance, the annotation store and MLflow's
# backend store. Names and passwords come from the container's environment (deploy/.env).
set -eu

create_database() {  # role password database
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v role="$1" -v password="$2" -v db="$3" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
SQL
}

create_database "$DAGSTER_PG_USER" "$DAGSTER_PG_PASSWORD" "$DAGSTER_PG_DB"
create_database "$ANNOTATIONS_DB_USER" "$ANNOTATIONS_DB_PASSWORD" "$ANNOTATIONS_DB_NAME"
create_database "$TRACKING_DB_USER" "$TRACKING_DB_PASSWORD" "$TRACKING_DB_NAME"
