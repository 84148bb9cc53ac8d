"""The containers Docker workers started for flow runs (the development job template keeps them after they
finish, for inspection); they hold the stack's network and LTS volume, so `docker compose down -v` alone
cannot delete those."""

from __future__ import annotations

FLOW_RUN_LABEL = "io.prefect.flow-run-id"  # set by Prefect's Docker worker on every container it starts


def remove_flow_run_containers(network: str) -> list[str]:
    """Remove (running or not) every flow-run container on `network`; returns their names."""
    import docker

    client = docker.from_env()
    containers = client.containers.list(all=True, filters={"network": network, "label": FLOW_RUN_LABEL})
    for container in containers:
        container.remove(force=True)
    return [container.name for container in containers]
