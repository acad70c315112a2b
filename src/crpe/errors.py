"""The OCI error catalogue: each code declared once with its HTTP status.

Handlers raise `RegistryError` subclasses; one exception handler writes the spec's envelope
`{"errors": [{"code", "message", "detail"}]}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "unknown error"

    def __init__(self, message: str | None = None, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


def _error(name: str, code: str, status: int, message: str) -> type[RegistryError]:
    return type(name, (RegistryError,), {"code": code, "status": status, "default_message": message})


BlobUnknown = _error("BlobUnknown", "BLOB_UNKNOWN", 404, "blob unknown to registry")
BlobUploadInvalid = _error("BlobUploadInvalid", "BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BlobUploadUnknown = _error("BlobUploadUnknown", "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DigestInvalid = _error("DigestInvalid", "DIGEST_INVALID", 400, "provided digest did not match uploaded content")
ManifestBlobUnknown = _error("ManifestBlobUnknown", "MANIFEST_BLOB_UNKNOWN", 400,
                             "manifest references a blob unknown to this repository")
ManifestInvalid = _error("ManifestInvalid", "MANIFEST_INVALID", 400, "manifest invalid")
ManifestUnknown = _error("ManifestUnknown", "MANIFEST_UNKNOWN", 404, "manifest unknown")
NameInvalid = _error("NameInvalid", "NAME_INVALID", 400, "invalid repository name")
NameUnknown = _error("NameUnknown", "NAME_UNKNOWN", 404, "repository name not known to registry")
SizeInvalid = _error("SizeInvalid", "SIZE_INVALID", 400, "provided length did not match content length")
Unauthorized = _error("Unauthorized", "UNAUTHORIZED", 401, "authentication required")
Denied = _error("Denied", "DENIED", 403, "requested access to the resource is denied")
Unsupported = _error("Unsupported", "UNSUPPORTED", 405, "the operation is unsupported")
TooManyRequests = _error("TooManyRequests", "TOOMANYREQUESTS", 429, "too many requests")
ManifestTooLarge = _error("ManifestTooLarge", "SIZE_INVALID", 413, "manifest too large")
RangeInvalid = _error("RangeInvalid", "BLOB_UPLOAD_INVALID", 416, "requested range not satisfiable")
QuotaExceeded = _error("QuotaExceeded", "DENIED", 403, "quota exceeded")
HostUnknown = _error("HostUnknown", "NAME_UNKNOWN", 404, "unknown registry endpoint")
