"""The disk side of a large response (§8): the spooled body, the checked output files, the zip.

`Archive` keeps one shipment's files and reads the zip over them from disk in bounded pieces, so
memory stays bounded whatever the sizes; the upload that sends it is `large.py`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from zipstream import ZipStream

from nvcf_sidecar.worker.artifacts import Artifact, ArtifactRefused, open_artifact, record_refusal
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = ["Archive", "Chunks", "LargeResponseFailed", "next_batch"]

_READ_BYTES: Final = 256 * 1024
_BATCH_BYTES: Final = 1024 * 1024

Chunks = Generator[bytes, None, None]
"""A zip stream, or one of its entries' sources, as chunks."""


class LargeResponseFailed(WorkerError):
    """A large response could not be shipped; the message says which step failed and how."""


@dataclass(frozen=True)
class _Entry:
    """An output file checked just before shipping: its size and identity are now fixed."""

    artifact: Artifact
    size: int
    identity: tuple[int, int]


class Archive:
    """One shipment's files: the spool (the zip's first entry, `body_name`), the checked output
    files, the zip being read.

    Every method but the constructor runs in the shipment's single worker thread, one at a time.
    """

    def __init__(
        self,
        body_name: str,
        spool_dir: Path | None,
        log: logging.LoggerAdapter[Any],
        metrics: WorkerMetrics,
    ) -> None:
        self._body_name = body_name
        self._log = log
        self._metrics = metrics
        try:
            self._spool, name = tempfile.mkstemp(
                prefix="nvcf-large-", suffix=".spool", dir=spool_dir
            )
        except OSError as error:
            where = spool_dir or tempfile.gettempdir()
            raise LargeResponseFailed(f"no spool file in {where}: {error}") from error
        self.spool_path = Path(name)
        self.body_size = 0
        self._entries: list[_Entry] = []
        self._chunks: Chunks | None = None
        self._readers: list[Chunks] = []

    def append(self, chunks: list[bytes]) -> None:
        """Write body chunks to the end of the spool file."""
        joined = b"".join(chunks)
        data = memoryview(joined)
        try:
            while data:
                data = data[os.write(self._spool, data) :]
        except OSError as error:
            raise LargeResponseFailed(
                f"could not spool the response body to {self.spool_path}: {error}"
            ) from error
        self.body_size += len(joined)

    def check(self, artifacts: Sequence[Artifact]) -> None:
        """Re-open each file the safe way and fix its size and identity; refusals are dropped."""
        for artifact in artifacts:
            try:
                descriptor, info = open_artifact(artifact)
            except ArtifactRefused as refusal:
                record_refusal(refusal, self._log, self._metrics)
                continue
            os.close(descriptor)
            self._entries.append(_Entry(artifact, info.st_size, (info.st_dev, info.st_ino)))

    def open_zip(self) -> tuple[Chunks, int]:
        """A fresh zip stream over the spool and the files, and its exact length.

        Opening one closes the previous one: a late reader of an abandoned attempt gets nothing.
        """
        self.close_zip()
        stream = ZipStream(sized=True)
        body = self._read_spool()
        stream.add(body, self._body_name, size=self.body_size)
        self._readers = [body]
        for entry in self._entries:
            reader = self._read_file(entry)
            stream.add(reader, entry.artifact.relative, size=entry.size)
            self._readers.append(reader)
        self._chunks = stream.finalize()
        return self._chunks, len(stream)

    def close_zip(self) -> None:
        """Abandon the zip stream of the last attempt and close the files it had open."""
        if self._chunks is not None:
            self._chunks.close()
            self._chunks = None
        for reader in self._readers:
            reader.close()
        self._readers = []

    def remove(self) -> None:
        """Close everything and delete the spool file."""
        try:
            self.close_zip()
        finally:
            os.close(self._spool)
            self.spool_path.unlink(missing_ok=True)

    def _read_spool(self) -> Generator[bytes, None, None]:
        offset = 0
        while offset < self.body_size:
            chunk = os.pread(self._spool, min(_READ_BYTES, self.body_size - offset), offset)
            if not chunk:
                raise LargeResponseFailed(
                    f"the spool file {self.spool_path} ended after {offset} of "
                    f"{self.body_size} bytes"
                )
            offset += len(chunk)
            yield chunk

    def _read_file(self, entry: _Entry) -> Generator[bytes, None, None]:
        relative = entry.artifact.relative
        try:
            descriptor, info = open_artifact(entry.artifact)
        except ArtifactRefused as refusal:
            record_refusal(refusal, self._log, self._metrics)
            raise LargeResponseFailed(f"output file changed while shipping: {refusal}") from None
        try:
            if (info.st_dev, info.st_ino) != entry.identity or info.st_size != entry.size:
                raise LargeResponseFailed(
                    f"output file {relative!r} changed while shipping: replaced or resized "
                    f"({entry.size} -> {info.st_size} bytes)"
                )
            remaining = entry.size
            while remaining:
                try:
                    chunk = os.read(descriptor, min(_READ_BYTES, remaining))
                except OSError as error:
                    raise LargeResponseFailed(
                        f"output file {relative!r} could not be read: {error}"
                    ) from error
                if not chunk:
                    raise LargeResponseFailed(
                        f"output file {relative!r} shrank while shipping "
                        f"({entry.size - remaining} of {entry.size} bytes read)"
                    )
                remaining -= len(chunk)
                yield chunk
        finally:
            os.close(descriptor)


def next_batch(chunks: Chunks) -> list[bytes]:
    """The next ~1 MiB of a zip stream as chunks; [] at its end (or once it was closed)."""
    batch: list[bytes] = []
    size = 0
    try:
        for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if size >= _BATCH_BYTES:
                break
    except (OSError, RuntimeError, ValueError) as error:
        raise LargeResponseFailed(f"the zip could not be built: {error}") from error
    return batch
