"""MDS column encodings: how one value of a column becomes bytes in a shard, and back.

Byte-compatible with mosaicml-streaming 0.13. Every column of an MDS dataset names one of these
encodings (`index.json`'s `column_encodings`); `ENCODINGS` maps the part before the first `:` to a
factory that receives the rest (only `ndarray` takes one: `ndarray[:dtype[:d0,d1,...]]`).

Encodings with a fixed size (the numeric scalars, `int`, and `ndarray:dtype:shape`) report it as
`Encoding.size`: the writer records it in `column_sizes` and stores no length for them.

Little-endian throughout: mosaicml-streaming writes native byte order, which is little-endian on
every machine it runs on (x86-64, ARM64); we pin it, so a big-endian array cannot change the bytes.
Decoding takes a `memoryview` of the shard and, for arrays and numeric scalars, reads it without
copying: the arrays are read-only views of the shard's bytes, as mosaicml-streaming's are.

Image encodings need Pillow (`pip install 'streaming[images]'`); `pkl` runs arbitrary code when
decoded, so it is marked unsafe and readers refuse it unless they opt in.
"""

from __future__ import annotations

import functools
import importlib
import json
import pickle
import reprlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from io import BytesIO
from typing import Any

import numpy as np

from streaming.errors import SampleError

__all__ = ["ENCODINGS", "NDARRAY_DTYPES", "Encoding", "encode_value", "get_encoding"]


@dataclass(frozen=True, kw_only=True)
class Encoding:
    """One column encoding: `encode(value) -> bytes` and `decode(memoryview) -> value`.

    `encode` raises TypeError/ValueError saying what it expected and what came; use
    `encode_value` to get a `SampleError` that also names the column.
    """

    name: str  # the full name, as in index.json ("ndarray:int32:2048")
    size: int | None  # bytes of every encoded value, or None when it varies
    encode: Callable[[Any], bytes]
    decode: Callable[[memoryview], Any]
    safe: bool = True  # False: decoding may execute code (pickle)


def _describe(value: Any) -> str:
    kind = type(value)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"{name} {reprlib.repr(value)}"


def _expect(ok: bool, expected: str, value: Any) -> None:
    if not ok:
        raise TypeError(f"expected {expected}, got {_describe(value)}")


def encode_value(column: str, encoding: Encoding, value: Any) -> bytes:
    """Encode one value of `column`; any bad value raises `SampleError` naming the column.

    As in mosaicml-streaming, a `bytes` value is taken as already encoded; for a fixed-size
    encoding its length must be that size.
    """
    try:
        if isinstance(value, bytes):
            data = value
        else:
            data = encoding.encode(value)
        if encoding.size is not None and len(data) != encoding.size:
            raise ValueError(f"expected {encoding.size} encoded bytes, got {len(data)}")
    except (TypeError, ValueError, OverflowError) as err:
        raise SampleError(f"column {column!r} (encoding {encoding.name!r}): {err}") from err
    return data


# ---- scalars and text ------------------------------------------------------------------------


def _bytes_encode(value: Any) -> bytes:
    _expect(isinstance(value, (bytes, bytearray, memoryview)), "bytes", value)
    return bytes(value)


def _str_encode(value: Any) -> bytes:
    _expect(isinstance(value, str), "str", value)
    return value.encode("utf-8")


def _utf8(data: memoryview) -> str:
    return str(data, "utf-8")


def _numeric(dtype_name: str, _name: str | None = None) -> Encoding:
    """A numpy scalar of `dtype_name`, stored as its little-endian bytes."""
    dtype = np.dtype(dtype_name).newbyteorder("<")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)

        def encode(value: Any) -> bytes:
            _expect(isinstance(value, (int, np.integer)), f"an integer for {dtype_name}", value)
            if not info.min <= int(value) <= info.max:
                raise ValueError(
                    f"expected a {dtype_name} in [{info.min}, {info.max}], got {value}"
                )
            return int(value).to_bytes(dtype.itemsize, "little", signed=dtype.kind == "i")

    else:

        def encode(value: Any) -> bytes:
            ok = isinstance(value, (int, float, np.integer, np.floating))
            _expect(ok, f"a real number for {dtype_name}", value)
            return np.array(value, dtype).tobytes()

    def decode(data: memoryview) -> Any:
        return np.frombuffer(data, dtype)[0]

    return Encoding(name=dtype_name, size=dtype.itemsize, encode=encode, decode=decode)


def _int_encode(value: Any) -> bytes:
    _expect(isinstance(value, (int, np.integer)), "an int (stored as int64)", value)
    if not -(1 << 63) <= int(value) < (1 << 63):
        raise ValueError(f"expected an int that fits int64, got {value}")
    return int(value).to_bytes(8, "little", signed=True)


def _str_int_encode(value: Any) -> bytes:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    _expect(ok, "an int", value)
    return str(int(value)).encode("utf-8")


def _str_float_encode(value: Any) -> bytes:
    ok = isinstance(value, (float, int)) and not isinstance(value, bool)
    _expect(ok, "a float", value)
    return str(value).encode("utf-8")


def _str_decimal_encode(value: Any) -> bytes:
    _expect(isinstance(value, Decimal), "a decimal.Decimal", value)
    return str(value).encode("utf-8")


def _json_encode(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    try:
        return json.dumps(value).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"expected a JSON-serializable value, got {_describe(value)}") from err


def _pkl_encode(value: Any) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception as err:  # pickling can fail with many exception types
        raise TypeError(f"expected a picklable value, got {_describe(value)}: {err}") from err


# ---- ndarray ---------------------------------------------------------------------------------

# Value dtype <-> the byte that names it when the encoding does not fix the dtype.
NDARRAY_DTYPES: dict[str, int] = {
    "uint8": 8,
    "int8": 9,
    "uint16": 16,
    "int16": 17,
    "float16": 18,
    "uint32": 32,
    "int32": 33,
    "float32": 34,
    "uint64": 64,
    "int64": 65,
    "float64": 66,
}
_DTYPE_OF_CODE = {code: np.dtype(name).newbyteorder("<") for name, code in NDARRAY_DTYPES.items()}
_SHAPE_DTYPES = [np.dtype(f"<u{n}") for n in (1, 2, 4, 8)]  # index = the low 2 bits


def _ndarray(arg: str | None) -> Encoding:
    parts = arg.split(":") if arg else []
    if len(parts) > 2:
        raise ValueError(f"ndarray takes at most dtype and shape, got 'ndarray:{arg}'")
    dtype_name = parts[0] if parts else None
    if dtype_name is not None and dtype_name not in NDARRAY_DTYPES:
        raise ValueError(
            f"ndarray dtype {dtype_name!r} unsupported; expected one of {list(NDARRAY_DTYPES)}"
        )
    shape: tuple[int, ...] | None = None
    if len(parts) == 2:
        try:
            shape = tuple(int(dim) for dim in parts[1].split(","))
        except ValueError:
            raise ValueError(
                f"ndarray shape must be comma-separated integers, got {parts[1]!r}"
            ) from None
        if min(shape) < 1:
            raise ValueError(f"ndarray shape dimensions must be >= 1, got {shape}")
    dtype = np.dtype(dtype_name).newbyteorder("<") if dtype_name else None
    size = int(np.prod(shape)) * dtype.itemsize if dtype is not None and shape is not None else None
    name = "ndarray" + (f":{arg}" if arg is not None else "")

    def encode(value: Any) -> bytes:
        _expect(isinstance(value, np.ndarray), "a numpy.ndarray", value)
        code = NDARRAY_DTYPES.get(value.dtype.name)
        if code is None:
            raise ValueError(
                f"expected an array of {'/'.join(NDARRAY_DTYPES)}, got dtype {value.dtype}"
            )
        if dtype is not None and value.dtype.name != dtype_name:
            raise ValueError(f"expected dtype {dtype_name}, got {value.dtype.name}")
        if value.size == 0:
            raise ValueError(f"expected a non-empty array, got shape {value.shape}")
        head = b"" if dtype is not None else bytes([code])
        if shape is None:
            if not 1 <= value.ndim < 64:
                raise ValueError(f"expected an array of 1 to 63 dimensions, got {value.ndim}")
            width = next(i for i, t in enumerate(_SHAPE_DTYPES) if max(value.shape) < 1 << (8 << i))
            head += bytes([(value.ndim << 2) | width])
            head += np.array(value.shape, _SHAPE_DTYPES[width]).tobytes()
        elif value.shape != shape:
            raise ValueError(f"expected shape {shape}, got {value.shape}")
        return head + np.asarray(value, value.dtype.newbyteorder("<")).tobytes()

    def decode(data: memoryview) -> np.ndarray:
        pos = 0
        value_dtype = dtype
        if value_dtype is None:
            value_dtype = _DTYPE_OF_CODE[data[0]]
            pos = 1
        # A copy: writable (torch warns on read-only arrays), and it does not pin the shard's
        # bytes or memory map. Copying 8 KB costs well under a microsecond.
        if shape is not None:
            return np.frombuffer(data, value_dtype, offset=pos).reshape(shape).copy()
        ndim, width = data[pos] >> 2, data[pos] & 3
        dims = np.frombuffer(data, _SHAPE_DTYPES[width], ndim, pos + 1)
        pos += 1 + ndim * _SHAPE_DTYPES[width].itemsize
        return np.frombuffer(data, value_dtype, offset=pos).reshape(dims.tolist()).copy()

    return Encoding(name=name, size=size, encode=encode, decode=decode)


# ---- images (Pillow) -------------------------------------------------------------------------


def _pil() -> Any:
    try:
        return importlib.import_module("PIL.Image")
    except ImportError as err:
        raise ModuleNotFoundError(
            "image encodings (jpeg, png, pil, jpeg_array, list[...]) need Pillow; "
            "install it with `pip install 'streaming[images]'`"
        ) from err


def _expect_image(value: Any) -> Any:
    image = _pil()
    _expect(isinstance(value, image.Image), "a PIL.Image.Image", value)
    return image


def _pil_encode(value: Any) -> bytes:
    _expect_image(value)
    mode = value.mode.encode("utf-8")
    return struct.pack("<3I", value.width, value.height, len(mode)) + mode + value.tobytes()


def _pil_decode(data: memoryview) -> Any:
    width, height, mode_len = struct.unpack_from("<3I", data)
    mode = str(data[12 : 12 + mode_len], "utf-8")
    return _pil().frombytes(mode, (width, height), bytes(data[12 + mode_len :]))


def _save(value: Any, fmt: str) -> bytes:
    out = BytesIO()
    try:
        value.save(out, format=fmt)
    except OSError as err:  # e.g. an RGBA image cannot be JPEG
        raise ValueError(f"cannot save a {value.mode} image as {fmt}: {err}") from err
    return out.getvalue()


def _jpeg_encode(value: Any) -> bytes:
    _expect_image(value)
    filename = getattr(value, "filename", None)
    jpeg_file = importlib.import_module("PIL.JpegImagePlugin").JpegImageFile
    if isinstance(value, jpeg_file) and filename:
        try:  # an image opened from a JPEG file is stored as that file, as mosaicml does
            with open(filename, "rb") as file:
                return file.read()
        except OSError:
            pass
    return _save(value, "JPEG")


def _png_encode(value: Any) -> bytes:
    _expect_image(value)
    return _save(value, "PNG")


def _image_decode(data: memoryview) -> Any:
    return _pil().open(BytesIO(data))


def _list_of(element: Encoding) -> tuple[Callable[[Any], bytes], Callable[[memoryview], Any]]:
    """[0: u32, reserved] [n: u32] [n sizes: u32] [n encoded elements]."""

    def encode(value: Any) -> bytes:
        _expect(isinstance(value, list), f"a list of images for {element.name}", value)
        parts = [element.encode(item) for item in value]
        sizes = struct.pack(f"<{2 + len(parts)}I", 0, len(parts), *map(len, parts))
        return sizes + b"".join(parts)

    def decode(data: memoryview) -> list[Any]:
        (count,) = struct.unpack_from("<I", data, 4)
        pos = 8 + 4 * count
        items = []
        for size in struct.unpack_from(f"<{count}I", data, 8):
            items.append(element.decode(data[pos : pos + size]))
            pos += size
        return items

    return encode, decode


def _jpeg_array_encode(value: Any) -> bytes:
    """[n: u32] [n sizes: u32] [n JPEG files]; items are JPEG bytes (or images, saved as JPEG)."""
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    _expect(ok, "a non-empty list of JPEG bytes", value)
    parts = []
    for item in value:
        if isinstance(item, (bytes, bytearray, memoryview)):
            parts.append(bytes(item))
        else:
            parts.append(_jpeg_encode(item))
    return struct.pack(f"<{1 + len(parts)}I", len(parts), *map(len, parts)) + b"".join(parts)


def _jpeg_array_decode(data: memoryview) -> list[Any]:
    (count,) = struct.unpack_from("<I", data)
    pos = 4 + 4 * count
    images = []
    for size in struct.unpack_from(f"<{count}I", data, 4):
        images.append(_image_decode(data[pos : pos + size]))
        pos += size
    return images


# ---- the table -------------------------------------------------------------------------------


def _plain(
    encode: Callable[[Any], bytes],
    decode: Callable[[memoryview], Any],
    *,
    size: int | None = None,
    safe: bool = True,
) -> Callable[[str | None], Encoding]:
    """A factory for an encoding that takes no argument."""

    def make(name: str | None) -> Encoding:
        assert name is not None
        return Encoding(name=name, size=size, encode=encode, decode=decode, safe=safe)

    return make


_PIL_ENC = Encoding(name="pil", size=None, encode=_pil_encode, decode=_pil_decode)
_JPEG_ENC = Encoding(name="jpeg", size=None, encode=_jpeg_encode, decode=_image_decode)
_PNG_ENC = Encoding(name="png", size=None, encode=_png_encode, decode=_image_decode)

# name -> factory(argument after the first ':' or None) -> Encoding
ENCODINGS: dict[str, Callable[[str | None], Encoding]] = {
    "bytes": _plain(_bytes_encode, bytes),
    "str": _plain(_str_encode, _utf8),
    "int": _plain(_int_encode, lambda data: int.from_bytes(data, "little", signed=True), size=8),
    **{name: functools.partial(_numeric, name) for name in NDARRAY_DTYPES},
    "json": _plain(_json_encode, lambda data: json.loads(_utf8(data))),
    "ndarray": _ndarray,
    "str_int": _plain(_str_int_encode, lambda data: int(_utf8(data))),
    "str_float": _plain(_str_float_encode, lambda data: float(_utf8(data))),
    "str_decimal": _plain(_str_decimal_encode, lambda data: Decimal(_utf8(data))),
    "pil": _plain(_pil_encode, _pil_decode),
    "jpeg": _plain(_jpeg_encode, _image_decode),
    "png": _plain(_png_encode, _image_decode),
    "jpeg_array": _plain(_jpeg_array_encode, _jpeg_array_decode),
    "jpegarray": _plain(_jpeg_array_encode, _jpeg_array_decode),  # mosaicml's alias
    "list[pil]": _plain(*_list_of(_PIL_ENC)),
    "list[jpeg]": _plain(*_list_of(_JPEG_ENC)),
    "list[png]": _plain(*_list_of(_PNG_ENC)),
    "pkl": _plain(_pkl_encode, pickle.loads, safe=False),
}


@functools.lru_cache(maxsize=256)
def get_encoding(name: str) -> Encoding:
    """The encoding called `name` in an MDS index (`"str"`, `"ndarray:int32:2048"`, ...)."""
    if not isinstance(name, str):
        raise TypeError(f"an encoding name must be a str, got {name!r}")
    base, sep, arg = name.partition(":")
    factory = ENCODINGS.get(base)
    if factory is None:
        raise ValueError(
            f"unknown MDS encoding {name!r}; expected one of {', '.join(ENCODINGS)} "
            "(ndarray also as ndarray:DTYPE or ndarray:DTYPE:D0,D1,...)"
        )
    if base == "ndarray":
        return factory(arg if sep else None)
    if sep:
        raise ValueError(f"encoding {base!r} takes no argument, got {name!r}")
    return factory(name)
