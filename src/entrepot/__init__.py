"""Entrepot: a self-hosted npm registry."""

__version__ = "0.1.0"
