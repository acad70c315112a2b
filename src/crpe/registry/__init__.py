"""The OCI Distribution Spec v1.1 HTTP API (`/v2/`) and the token endpoint of registry hosts."""
