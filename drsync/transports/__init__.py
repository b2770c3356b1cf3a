"""Transports: how a run reaches a node. ``local`` is a directory on this machine."""
