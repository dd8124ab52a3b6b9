#!/bin/bash
# Entry point of the compose `study` runner: `docker compose run --rm study run SPEC ...`.
# A Ray driver must run on a Ray node (it talks to a local raylet and object store), so the
# runner first joins the cluster as a node that takes no trials (0 CPUs, 0 GPUs), then runs the
# study command with the cluster, MLflow and Optuna addresses from its environment.
set -euo pipefail
if ! ray start --address="${RAY_ADDRESS:?RAY_ADDRESS names the Ray head}" --num-cpus=0 \
        --num-gpus=0 --disable-usage-stats > /tmp/ray-join.log 2>&1; then
    echo "study-runner: could not join the Ray cluster at ${RAY_ADDRESS}:" >&2
    tail -n 20 /tmp/ray-join.log >&2
    exit 2
fi
exec study "$@"
