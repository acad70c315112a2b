"""Registry authentication: password hashing, JWT access and refresh tokens, scopes and permissions."""
