"""The upload, NumPy and Pillow helpers of NVIDIA's `nvcf_container` module, for `nvcf_worker.compat`.

Uploads use the standard library; NumPy and Pillow are imported only when a helper that needs them
runs, and a missing one raises `ModuleNotFoundError` naming the `helpers` extra to install.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, Final

from nvcf_worker.outputs import open_output

if TYPE_CHECKING:
    import urllib.request

    import numpy.typing as npt
    from PIL.Image import Image

__all__ = [
    "IMAGE_FORMAT",
    "IMAGE_QUALITY",
    "b64_pattern",
    "decode_base64_str_to_bytes",
    "decode_base64_to_image",
    "encode_bytes_base64_to_str",
    "encode_image_to_base64",
    "load_image",
    "load_npz",
    "save_image_with_directory",
    "upload",
    "upload_file",
]

IMAGE_FORMAT = "JPEG"
IMAGE_QUALITY = 90
#: Standard base64 text (padding included), as NVIDIA's module defines it; `load_image` uses it to
#: tell an encoded image from a file name.
b64_pattern = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")

EXTRA: Final = "helpers"
"""The optional extra that installs NumPy and Pillow: `pip install 'nvcf-worker[helpers]'`."""
_PATH_MAX: Final = 4096  # longer text cannot name a file, so it is not looked up as one
_SHOWN: Final = 60
_EXTENSIONS: Final = {"JPEG": "jpg", "PNG": "png"}


def _missing_extra(package: str, module: str, helper: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"nvcf_worker.compat.{helper} needs {package}, which nvcf-worker installs only with its "
        f"{EXTRA!r} extra: pip install 'nvcf-worker[{EXTRA}]'",
        name=module,
    )


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else f"{text[:_SHOWN]}...")


# -- uploads ------------------------------------------------------------------------------------


def upload_file(
    filename: str | os.PathLike[str], url: str, headers: Mapping[str, str], timeout: float = 30
) -> dict[str, Any]:
    """PUT the file `filename` to `url` (a presigned URL); see `upload`."""
    with open(filename, "rb") as stream:
        return upload(stream, url, headers, timeout)


def upload(
    stream: IO[bytes] | bytes | bytearray | memoryview | str,
    url: str,
    headers: Mapping[str, str],
    timeout: float = 30,
) -> dict[str, Any]:
    """PUT `stream` (a binary file, bytes, or text sent as UTF-8) to `url` with `headers`.

    Returns `{"status_code": int, "response": text}` for any HTTP status, as NVIDIA's helper does
    (2xx is success); connection errors and timeouts (`timeout` seconds per socket operation)
    raise `OSError`. The body always carries a `Content-Length`, as S3's presigned PUT requires:
    a seekable stream is sent from its current position without being loaded into memory, any
    other stream is read whole first. No `Content-Type` is added; a redirect is returned, not followed.
    """
    import urllib.error
    import urllib.request

    body, length = _body(stream)
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="PUT")
    request.add_header("Content-Length", str(length))  # replaces one given in `headers`
    try:
        with _opener().open(request, timeout=timeout) as response:
            return _answer(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as error:  # urllib raises for 4xx and 5xx: still an answer
        with error:
            return _answer(error.code, error.read(), error.headers)


def _body(stream: IO[bytes] | bytes | bytearray | memoryview | str) -> tuple[Any, int]:
    if isinstance(stream, str):
        stream = stream.encode()
    if isinstance(stream, bytes | bytearray | memoryview):
        return stream, memoryview(stream).nbytes
    if stream.seekable():
        start = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(start)
        return stream, end - start
    data = stream.read()
    return data, len(data)


def _answer(status: int, data: bytes, headers: Any) -> dict[str, Any]:
    charset = headers.get_content_charset() if headers is not None else None
    try:
        text = data.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        text = data.decode("utf-8", "replace")
    return {"status_code": status, "response": text}


def _opener() -> urllib.request.OpenerDirector:
    import urllib.request

    class AsGivenHeaders(urllib.request.BaseHandler):
        """Drops the form `Content-Type` urllib adds to every body: only the caller's headers go
        out (a presigned URL may sign the content type, and the object keeps it)."""

        handler_order = 1000  # after urllib's own request processing

        def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
            request.unredirected_hdrs.pop("Content-type", None)  # the caller's are in `headers`
            return request

        https_request = http_request

    # urllib follows no redirect of a PUT: a 3xx comes back as an HTTPError, so as an answer.
    return urllib.request.build_opener(AsGivenHeaders())


# -- NumPy and Pillow ---------------------------------------------------------------------------


def _asset_file(input_str: str, root_dir: str | os.PathLike[str]) -> str | None:
    """`root_dir/input_str` when it is a regular file inside `root_dir` (links resolved)."""
    if len(input_str) > _PATH_MAX or "\x00" in input_str:
        return None
    root = os.path.realpath(root_dir)
    candidate = os.path.realpath(os.path.join(root, input_str))
    if os.path.commonpath([root, candidate]) != root or not os.path.isfile(candidate):
        return None
    return candidate


def load_npz(input_str: str, root_dir: str | os.PathLike[str], array_name: str) -> npt.NDArray[Any]:
    """The array `array_name` of the `.npz` file `input_str` (an asset id) in `root_dir`.

    Raises `FileNotFoundError` when that is no file inside `root_dir`, `ValueError` when it is
    not an npz archive (pickled objects are refused) and `KeyError` when it has no such array.
    """
    try:
        import numpy
    except ImportError as error:
        raise _missing_extra("NumPy", "numpy", "load_npz") from error
    path = _asset_file(input_str, root_dir)
    if path is None:
        raise FileNotFoundError(f"no file {_shown(input_str)} in {os.fspath(root_dir)!r}")
    try:
        archive = numpy.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"asset {_shown(input_str)} is not an npz file ({error})") from None
    if not isinstance(archive, numpy.lib.npyio.NpzFile):
        raise ValueError(f"asset {_shown(input_str)} is a single .npy array, not an npz file")
    with archive:
        if array_name not in archive.files:
            raise KeyError(f"asset {_shown(input_str)} has no array {array_name!r}")
        return archive[array_name]


def load_image(
    input_str: str, root_dir: str | os.PathLike[str], has_transparency: bool = False
) -> Image:
    """An RGB image (RGBA with `has_transparency`) from the file `input_str` in `root_dir`, or
    from `input_str` itself as base64 text when no such file exists.

    A file outside `root_dir` (an absolute path, `..`, a link out) is not read. Raises
    `ValueError` when `input_str` is neither, or does not hold an image Pillow can read.
    """
    try:
        from PIL import Image
    except ImportError as error:
        raise _missing_extra("Pillow", "PIL", "load_image") from error
    path = _asset_file(input_str, root_dir)
    if path is not None:
        source: str | io.BytesIO = path
    elif b64_pattern.fullmatch(text := "".join(input_str.split())):  # line breaks allowed
        source = io.BytesIO(base64.b64decode(text))
    else:
        raise ValueError(
            f"{_shown(input_str)} is neither a file in {os.fspath(root_dir)!r} nor base64 text"
        )
    try:
        with Image.open(source) as image:
            return image.convert("RGBA" if has_transparency else "RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{_shown(input_str)} is not a readable image ({error})") from None


def encode_bytes_base64_to_str(b: bytes) -> bytes:
    """`b` as base64 — returned as ASCII bytes, as NVIDIA's helper does despite its name."""
    return base64.b64encode(b)


def decode_base64_str_to_bytes(base64_str: str | bytes) -> io.BytesIO:
    """The bytes `base64_str` encodes, in a `BytesIO` (what NVIDIA's returns, to open as a file).

    Takes text or bytes (NVIDIA's takes bytes only); line breaks are ignored, invalid padding
    raises `binascii.Error` (a `ValueError`).
    """
    return io.BytesIO(base64.b64decode(base64_str))  # skips characters outside the alphabet


def decode_base64_to_image(base64_str: str | bytes, has_transparency: bool = False) -> Image:
    """The image `base64_str` encodes, converted to RGB (RGBA with `has_transparency`)."""
    try:
        from PIL import Image
    except ImportError as error:
        raise _missing_extra("Pillow", "PIL", "decode_base64_to_image") from error
    with Image.open(decode_base64_str_to_bytes(base64_str)) as image:
        return image.convert("RGBA" if has_transparency else "RGB")


def _encode_image(image: Image, image_format: str, image_quality: int) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, image_format, quality=image_quality, optimize=True)
    elif image_format == "PNG":
        image.save(buffer, image_format, optimize=True)
    else:
        image.save(buffer, image_format)
    return buffer.getvalue()


def encode_image_to_base64(
    image: Image, image_format: str = IMAGE_FORMAT, image_quality: int = IMAGE_QUALITY
) -> bytes:
    """`image` saved as `image_format` (JPEG at `image_quality`, optimised), as base64 bytes."""
    return encode_bytes_base64_to_str(_encode_image(image, image_format, image_quality))


def save_image_with_directory(
    image: Image,
    path: str | os.PathLike[str] = "",
    image_format: str = IMAGE_FORMAT,
    image_quality: int = IMAGE_QUALITY,
) -> str:
    """Save `image` as `<path>/image.jpg` (JPEG) or `<path>/image.png` (PNG) and return that path.

    `path` is the directory, created with its parents when missing ("" is the working
    directory). The file is written atomically (`image.jpg.partial`, then renamed), so a worker
    zipping the output directory never ships half an image. Other formats raise `ValueError`.
    """
    extension = _EXTENSIONS.get(image_format)
    if extension is None:
        raise ValueError(f"image format {image_format!r} is not supported; use 'JPEG' or 'PNG'")
    data = _encode_image(image, image_format, image_quality)  # before a file exists
    name = f"image.{extension}"
    with open_output(path or os.curdir, name) as stream:
        stream.write(data)
    return os.path.join(path, name)
