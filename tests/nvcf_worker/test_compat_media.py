"""NVIDIA's upload, NumPy and Pillow helpers in `nvcf_worker.compat`, used as NVIDIA's samples do.

Uploads go to a real HTTP server on 127.0.0.1; image and array helpers round-trip real data; a
missing NumPy or Pillow is simulated through `sys.modules`.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nvcf_worker import compat

# -- uploads to a real server -----------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ObjectStore:
    url: str
    received: list[Received] = field(default_factory=list)


class _StoreHandler(http.server.BaseHTTPRequestHandler):
    """Stores PUT bodies; `/status/<code>` answers that code, `/redirect` a 307."""

    store: ObjectStore

    def do_PUT(self) -> None:
        length = self.headers.get("Content-Length")
        body = self.rfile.read(int(length)) if length is not None else b""
        self.store.received.append(
            Received("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        if self.path == "/redirect":
            self._answer(307, b"", {"Location": f"{self.store.url}/elsewhere"})
        elif self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
            self._answer(code, "<Error>refusé</Error>".encode("latin-1"),
                         {"Content-Type": "application/xml; charset=latin-1"})  # fmt: skip
        else:
            self._answer(200, f"stored {len(body)} bytes".encode(), {})

    def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StoreHandler)
    store = ObjectStore(f"http://127.0.0.1:{server.server_address[1]}")
    _StoreHandler.store = store
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_upload_file_puts_the_file_byte_identical_and_returns_status_and_text(
    store: ObjectStore, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "image.jpg").write_bytes(data)
    response = compat.upload_file(
        str(tmp_path / "image.jpg"), f"{store.url}/bucket/key", {"Content-Type": "image/jpg"}
    )
    assert response == {"status_code": 200, "response": f"stored {len(data)} bytes"}
    [put] = store.received
    assert (put.method, put.path, put.body) == ("PUT", "/bucket/key", data)
    assert put.headers["content-type"] == "image/jpg"
    assert put.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in put.headers  # S3's presigned PUT refuses chunked bodies


def test_upload_sends_a_stream_from_its_position_and_adds_no_content_type(
    store: ObjectStore,
) -> None:
    stream = io.BytesIO(b"skip:payload")
    stream.seek(5)
    response = compat.upload(stream, f"{store.url}/k", {}, timeout=5)
    assert response["status_code"] == 200
    [put] = store.received
    assert put.body == b"payload"
    assert "content-type" not in put.headers


@pytest.mark.parametrize("body", [b"raw bytes", bytearray(b"raw bytes"), "text é"])
def test_upload_takes_bytes_and_text(store: ObjectStore, body: bytes | bytearray | str) -> None:
    compat.upload(body, f"{store.url}/k", {"x-amz-meta-a": "1"})
    [put] = store.received
    expected = body.encode() if isinstance(body, str) else bytes(body)
    assert put.body == expected
    assert put.headers["x-amz-meta-a"] == "1"


def test_upload_reads_an_unseekable_stream_whole_to_send_a_length(store: ObjectStore) -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"from a pipe")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        compat.upload(pipe, f"{store.url}/k", {})
    [put] = store.received
    assert (put.body, put.headers["content-length"]) == (b"from a pipe", "11")


@pytest.mark.parametrize("code", [400, 403, 500, 503])
def test_upload_returns_an_error_status_and_its_text_instead_of_raising(
    store: ObjectStore, code: int
) -> None:
    response = compat.upload(b"x", f"{store.url}/status/{code}", {})
    assert response == {"status_code": code, "response": "<Error>refusé</Error>"}


def test_upload_returns_a_redirect_without_following_it(store: ObjectStore) -> None:
    response = compat.upload(b"x", f"{store.url}/redirect", {})
    assert response["status_code"] == 307
    assert [put.path for put in store.received] == ["/redirect"]


def test_upload_raises_os_error_when_nothing_listens() -> None:
    with pytest.raises(OSError, match="Connection refused"):  # urllib's URLError
        compat.upload(b"x", "http://127.0.0.1:9/k", {}, timeout=5)


# -- base64 without Pillow --------------------------------------------------------------------


def test_base64_helpers_return_what_nvidias_return() -> None:
    assert compat.encode_bytes_base64_to_str(b"\x00\xffhi") == b"AP9oaQ=="
    for encoded in ("AP9oaQ==", b"AP9oaQ==", b"AP9o\naQ==\n"):
        decoded = compat.decode_base64_str_to_bytes(encoded)
        assert isinstance(decoded, io.BytesIO)
        assert decoded.read() == b"\x00\xffhi"


# -- Pillow -----------------------------------------------------------------------------------


@pytest.fixture
def pil() -> Any:
    return pytest.importorskip("PIL.Image")


def gradient(pil: Any, mode: str = "RGB") -> Any:
    image = pil.new(mode, (32, 16))
    image.putdata([(x * 8, y * 16, 128, 200)[: len(mode)] for y in range(16) for x in range(32)])
    return image


def test_png_round_trip_through_base64_is_lossless(pil: Any) -> None:
    image = gradient(pil)
    encoded = compat.encode_image_to_base64(image=image, image_format="PNG")
    assert isinstance(encoded, bytes)
    decoded = compat.decode_base64_to_image(encoded)
    assert (decoded.mode, decoded.size) == ("RGB", (32, 16))
    assert decoded.tobytes() == image.tobytes()


def test_transparency_is_kept_only_when_asked(pil: Any) -> None:
    encoded = compat.encode_image_to_base64(gradient(pil, "RGBA"), image_format="PNG")
    assert compat.decode_base64_to_image(encoded, has_transparency=True).mode == "RGBA"
    assert compat.decode_base64_to_image(encoded).mode == "RGB"


def test_jpeg_is_the_default_format(pil: Any) -> None:
    encoded = compat.encode_image_to_base64(gradient(pil))
    assert base64.b64decode(encoded)[:3] == b"\xff\xd8\xff"
    assert encoded.startswith(b"/9j/")


def test_load_image_reads_an_asset_file_or_base64_text(pil: Any, tmp_path: Path) -> None:
    image = gradient(pil)
    image.save(tmp_path / "asset-1", "PNG")
    from_file = compat.load_image("asset-1", str(tmp_path))
    assert from_file.tobytes() == image.tobytes()

    jpeg = compat.encode_image_to_base64(image).decode()  # starts with "/": not a path
    assert compat.load_image(jpeg, str(tmp_path)).size == (32, 16)
    wrapped = base64.encodebytes(base64.b64decode(jpeg)).decode()  # MIME line breaks
    assert compat.load_image(wrapped, tmp_path, has_transparency=True).mode == "RGBA"


def test_load_image_reads_no_file_outside_its_root_dir(pil: Any, tmp_path: Path) -> None:
    root = tmp_path / "inputAssets"
    root.mkdir()
    gradient(pil).save(tmp_path / "secret.png", "PNG")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    for name in ("../secret.png", str(tmp_path / "secret.png"), "link.png"):
        with pytest.raises(ValueError, match="neither a file in"):
            compat.load_image(name, str(root))


def test_load_image_of_something_else_says_what_it_got(pil: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a file in"):
        compat.load_image("no such file.png", str(tmp_path))
    (tmp_path / "notes").write_text("not an image")
    with pytest.raises(ValueError, match="'notes' is not a readable image"):
        compat.load_image("notes", str(tmp_path))
    with pytest.raises(ValueError, match="not a readable image"):
        compat.load_image("aGVsbG8gd29ybGQ=", str(tmp_path))  # base64 of text


def test_save_image_with_directory_creates_the_directory_and_writes_atomically(
    pil: Any, tmp_path: Path
) -> None:
    image = gradient(pil)
    target = tmp_path / "response" / "req-1" / "images"
    saved = compat.save_image_with_directory(image, str(target), image_format="PNG")
    assert saved == str(target / "image.png")
    assert os.listdir(target) == ["image.png"]  # no .partial left behind
    with pil.open(saved) as reopened:
        assert reopened.convert("RGB").tobytes() == image.tobytes()
    saved = compat.save_image_with_directory(image, str(target))
    assert saved == str(target / "image.jpg")
    assert Path(saved).read_bytes()[:3] == b"\xff\xd8\xff"


def test_save_image_with_directory_defaults_to_the_working_directory(
    pil: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert compat.save_image_with_directory(gradient(pil)) == "image.jpg"
    assert (tmp_path / "image.jpg").is_file()


def test_save_image_with_directory_refuses_other_formats_before_writing(
    pil: Any, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="'GIF' is not supported"):
        compat.save_image_with_directory(gradient(pil), str(tmp_path / "out"), "GIF")
    assert not (tmp_path / "out").exists()


# -- NumPy ------------------------------------------------------------------------------------


def test_load_npz_returns_the_named_array(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    weights = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
    with open(tmp_path / "asset-2", "wb") as stream:  # an asset id has no extension
        numpy.savez(stream, weights=weights, bias=numpy.zeros(4))
    loaded = compat.load_npz("asset-2", str(tmp_path), "weights")
    assert loaded.dtype == numpy.float32
    assert numpy.array_equal(loaded, weights)
    with pytest.raises(KeyError, match="no array 'missing'"):
        compat.load_npz("asset-2", str(tmp_path), "missing")


def test_load_npz_refuses_missing_foreign_and_non_npz_files(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    root = tmp_path / "in"
    root.mkdir()
    numpy.savez(tmp_path / "outside.npz", a=numpy.ones(1))
    with pytest.raises(FileNotFoundError):
        compat.load_npz("absent", str(root), "a")
    with pytest.raises(FileNotFoundError):
        compat.load_npz("../outside.npz", str(root), "a")
    (root / "text").write_text("hello")
    with pytest.raises(ValueError, match="not an npz file"):
        compat.load_npz("text", str(root), "a")
    numpy.save(root / "single.npy", numpy.ones(2))
    with pytest.raises(ValueError, match=r"single \.npy array"):
        compat.load_npz("single.npy", str(root), "a")


# -- without the optional packages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "package", "call"),
    [
        ("PIL", "Pillow", lambda: compat.load_image("x", ".")),
        ("PIL", "Pillow", lambda: compat.decode_base64_to_image(b"")),
        ("numpy", "NumPy", lambda: compat.load_npz("x", ".", "a")),
    ],
    ids=["load_image", "decode_base64_to_image", "load_npz"],
)
def test_a_missing_package_raises_an_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str, call: Any
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import PIL` now fails as if absent
    with pytest.raises(ImportError) as info:
        call()
    assert isinstance(info.value, ModuleNotFoundError)
    assert info.value.name == module
    assert f"needs {package}" in str(info.value)
    assert "pip install 'nvcf-worker[helpers]'" in str(info.value)


# -- a sample, unchanged but for the import ---------------------------------------------------


def test_nvidias_rotate_image_sample_runs_against_compat(
    pil: Any, tmp_path: Path, store: ObjectStore
) -> None:
    """The flow of NVIDIA's image samples: headers in lower case, an asset, float progress, a
    base64 answer or a saved file, an upload."""
    helpers = compat
    (tmp_path / "in").mkdir()
    gradient(pil).save(tmp_path / "in" / "a1", "PNG")
    headers = {
        "nvcf-reqid": "req-9",
        "nvcf-asset-dir": str(tmp_path / "in"),
        "nvcf-large-output-dir": str(tmp_path / "out"),
        "nvcf-function-asset-ids": "a1",
        "nvcf-max-response-size-bytes": "100",
    }
    request_parameters_dict = helpers._uppercase_dict_keys(headers)
    input_path = helpers.get_input_path(request_parameters_dict)
    output_path = helpers.get_output_path(request_parameters_dict)
    asset_id = helpers.get_asset_ids(request_parameters_dict)[0]
    image = helpers.load_image(asset_id, input_path)
    for i in range(1, 10):
        image = image.rotate(10)
        helpers.update_progress_file(
            request_parameters_dict, progress_value=i / 9 * 100, partial_response={"step": i}
        )
        progress = json.loads((tmp_path / "out" / "progress").read_bytes())
        assert progress == {
            "id": "req-9",
            "progress": int(i / 9 * 100),
            "partialResponse": {"step": i},
        }
    image_encoded = helpers.encode_image_to_base64(image=image, image_format="PNG")
    assert len(image_encoded) >= helpers.get_max_msg_size(request_parameters_dict)
    saved = helpers.save_image_with_directory(image, output_path, image_format="PNG")
    assert sorted(os.listdir(output_path)) == ["image.png", "progress"]
    response = helpers.upload_file(saved, f"{store.url}/out.png", {"Content-Type": "image/png"})
    assert response["status_code"] in (200, 201)
    assert store.received[0].body == Path(saved).read_bytes()
