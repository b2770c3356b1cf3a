"""Registers the fixtures of docker_nodes.py for the docker tests."""

from docker_nodes import compose_cli, docker_cli, node_image, start_node  # noqa: F401
