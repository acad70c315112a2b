"""The metadata database: accounts, instances, namespaces, repositories, manifests, tags and blob links."""

from crpe.metadata.store import MetadataStore

__all__ = ["MetadataStore"]
