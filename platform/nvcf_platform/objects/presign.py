"""Presigned URLs of the platform's object store: HMAC-signed, one method, one key, expiring.

The URL is the key (S3's presigned URLs in NVIDIA's NVCF): whoever holds one may do its one method
on its one object until it expires, with no Authorization header. The signing secret may live in a
0600 file (`load_or_create_secret`), so that URLs outlive a platform restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nvcf_platform.errors import ConfigError, InvalidSignature, PlatformError

__all__ = ["MIN_SECRET_BYTES", "URL_LIFETIME_SECONDS", "UrlSigner", "load_or_create_secret"]

URL_LIFETIME_SECONDS: Final = 34 * 60
"""Validity of a presigned URL, as NVIDIA's invocation service signs them (workers trust 30 min)."""
MIN_SECRET_BYTES: Final = 16


class UrlSigner:
    """Presigned URLs: HMAC-SHA256 over `METHOD\\npath\\nexpires`, hex, in the query string."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
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


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret kept in `path`: its content without surrounding whitespace.

    A missing file is created once with 32 random bytes (hex) and mode 0600; of two processes
    creating it at once, both end up with the same secret. Raises `ConfigError` for a file that
    group or others may read, or that holds fewer than 16 bytes, and `PlatformError` when it
    cannot be read or written.
    """
    try:
        if not path.exists():
            _create_secret_file(path)
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"url_signing_secret_file: {str(path)!r} may be read by others "
                f"(mode {mode & 0o777:o}); chmod 600 it"
            )
        secret = path.read_bytes().strip()
    except OSError as error:
        raise PlatformError(f"cannot use the URL signing secret {str(path)!r}: {error}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"url_signing_secret_file: {str(path)!r} holds {len(secret)} bytes; "
            f"at least {MIN_SECRET_BYTES} are needed"
        )
    return secret


def _create_secret_file(path: Path) -> None:
    """Write a fresh secret beside `path`, then link it into place unless someone was first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        try:
            os.link(partial, path)  # atomic and never replaces: the first writer wins
        except FileExistsError:
            pass
    finally:
        partial.unlink(missing_ok=True)
