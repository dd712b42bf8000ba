"""Presigned URLs of the platform's object store: HMAC-signed, one method, one key, expiring.

The URL is the key (S3's presigned URLs in NVIDIA's NVCF): whoever holds one may do its one method
on its one object until it expires, with no Authorization header.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

from nvcf_sidecar.platform.errors import InvalidSignature

__all__ = ["URL_LIFETIME_SECONDS", "UrlSigner"]

URL_LIFETIME_SECONDS: Final = 34 * 60
"""Validity of a presigned URL, as NVIDIA's invocation service signs them (workers trust 30 min)."""


class UrlSigner:
    """Presigned URLs: HMAC-SHA256 over `METHOD\\npath\\nexpires`, hex, in the query string."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the URL signing secret must be at least 16 bytes")
        self._secret = secret

    def signature(self, method: str, path: str, expires: int) -> str:
        message = f"{method.upper()}\n{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def presign(
        self,
        method: str,
        base_url: str,
        path: str,
        *,
        lifetime: float = URL_LIFETIME_SECONDS,
        now: float | None = None,
    ) -> str:
        """`<base_url><path>?expires=<unix>&signature=<hex>`, valid for `lifetime` seconds."""
        expires = int((time.time() if now is None else now) + lifetime)
        signature = self.signature(method, path, expires)
        return f"{base_url.rstrip('/')}{path}?expires={expires}&signature={signature}"

    def verify(
        self, method: str, path: str, query: Mapping[str, str], *, now: float | None = None
    ) -> None:
        """Raise `InvalidSignature` unless `query` signs `method` on `path` and is unexpired."""
        expires_text, signature = query.get("expires", ""), query.get("signature", "")
        if not expires_text.isdigit() or not signature:
            raise InvalidSignature("the URL has no valid `expires` and `signature` parameters")
        expected = self.signature(method, path, int(expires_text))
        if not hmac.compare_digest(expected, signature.lower()):
            raise InvalidSignature("the signature does not match this method and object")
        if int(expires_text) < (time.time() if now is None else now):
            raise InvalidSignature("the presigned URL has expired")
