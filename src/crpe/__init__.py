"""crpe: a self-hosted, multi-tenant container registry with per-instance exclusive endpoints."""

__version__ = "0.1.0"
