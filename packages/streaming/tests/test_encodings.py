"""MDS column encodings: round trips (hypothesis), exact byte layouts, sizes and bad values."""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from streaming.encodings import ENCODINGS, NDARRAY_DTYPES, encode_value, get_encoding
from streaming.errors import SampleError
from streaming.format import INDEX_NAME, parse_index
from streaming.shard import Shard
from streaming.writer import MDSWriter

# derandomize: the same examples on every run (deterministic suite); no example database.
FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def round_trip(name, value):
    encoding = get_encoding(name)
    data = encoding.encode(value)
    if encoding.size is not None:
        assert len(data) == encoding.size
    return encoding.decode(memoryview(data))


def same(a, b):
    """Equality that treats NaN as equal to itself and keeps dtype/shape/type."""
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return type(b) is float and (a == b or (a != a and b != b))
    return type(a) is type(b) and a == b


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite_floats | st.text()


def json_containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)


json_values = st.recursive(json_scalars, json_containers, max_leaves=12)
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> PIL mode


def to_image(pixels: np.ndarray) -> Image.Image:
    channels = pixels.shape[2]
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, IMAGE_MODES[channels])


image_shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from(list(IMAGE_MODES)))
images = hnp.arrays(np.uint8, image_shapes).map(to_image)
ndarrays = st.sampled_from(list(NDARRAY_DTYPES)).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
)


@FAST
@given(st.data())
def test_scalar_round_trips(data):
    name = data.draw(st.sampled_from(["int", *NDARRAY_DTYPES]))
    if name == "int":
        value = data.draw(st.integers(-(2**63), 2**63 - 1))
        assert same(round_trip(name, value), value)
        return
    dtype = np.dtype(name)
    if dtype.kind == "f":
        value = data.draw(st.floats(width=8 * dtype.itemsize))
    else:
        info = np.iinfo(dtype)
        value = data.draw(st.integers(int(info.min), int(info.max)))
    decoded = round_trip(name, value)
    assert isinstance(decoded, np.generic) and decoded.dtype == dtype
    assert decoded.tobytes() == np.array(value, dtype).tobytes()


@FAST
@given(st.binary(), st.text(), st.integers(), st.floats(), st.decimals(), json_values)
def test_text_like_round_trips(raw, text, big, real, dec, obj):
    assert same(round_trip("bytes", raw), raw)
    assert same(round_trip("str", text), text)
    assert same(round_trip("str_int", big), big)
    assert same(round_trip("str_float", real), real)
    assert str(round_trip("str_decimal", dec)) == str(dec)
    assert round_trip("json", obj) == obj
    assert round_trip("pkl", {"obj": obj, "set": {1}}) == {"obj": obj, "set": {1}}


@FAST
@given(ndarrays)
def test_ndarray_round_trips_in_every_form(array):
    assert same(round_trip("ndarray", array), array)
    assert same(round_trip(f"ndarray:{array.dtype.name}", array), array)
    shape = ",".join(map(str, array.shape))
    fixed = get_encoding(f"ndarray:{array.dtype.name}:{shape}")
    assert fixed.size == array.nbytes
    assert same(round_trip(fixed.name, array), array)
    decoded = round_trip("ndarray", np.asfortranarray(array))  # any memory layout, C order out
    assert same(decoded, np.ascontiguousarray(array))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(images, st.lists(images, max_size=3))
def test_image_round_trips(image, many):
    def pixels(img):
        return (img.mode, img.size, img.tobytes())

    assert pixels(round_trip("pil", image)) == pixels(image)
    assert pixels(round_trip("png", image)) == pixels(image)
    assert [pixels(i) for i in round_trip("list[pil]", many)] == [pixels(i) for i in many]
    assert [pixels(i) for i in round_trip("list[png]", many)] == [pixels(i) for i in many]
    rgb = [i.convert("RGB") for i in many]
    assert [i.size for i in round_trip("list[jpeg]", rgb)] == [i.size for i in rgb]
    assert round_trip("jpeg", image.convert("RGB")).size == image.size
    jpegs = [get_encoding("jpeg").encode(i) for i in [image.convert("RGB"), *rgb]]
    assert [i.size for i in round_trip("jpeg_array", jpegs)] == [image.size] + [i.size for i in rgb]


COLUMNS = {
    "a": "ndarray",
    "b": "str",
    "c": "int",
    "d": "float32",
    "e": "ndarray:uint16:3",
    "f": "json",
}
samples = st.fixed_dictionaries(
    {
        "a": ndarrays,
        "b": st.text(max_size=50),
        "c": st.integers(-(2**63), 2**63 - 1),
        "d": st.floats(width=32, allow_nan=False),
        "e": hnp.arrays(np.uint16, 3),
        "f": json_values,
    }
)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.lists(samples, max_size=30), st.sampled_from([None, "zstd", "gz:1"]))
def test_writer_to_shard_round_trip(batch, compression):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ds")
        with MDSWriter(
            out=out, columns=COLUMNS, compression=compression, hashes=["xxh64"], size_limit=600
        ) as writer:
            for sample in batch:
                writer.write(sample)
        with open(os.path.join(out, INDEX_NAME), "rb") as file:
            infos = parse_index(file.read(), out)
        assert sum(info.samples for info in infos) == len(batch)
        decoded = []
        for info in infos:
            assert info.raw_data.bytes <= 600 or info.samples == 1
            with Shard.open(os.path.join(out, info.basename), info) as shard:
                decoded.extend(shard[i] for i in range(len(shard)))
    for got, want in zip(decoded, batch, strict=True):
        assert same(got["a"], want["a"]) and same(got["e"], want["e"])
        assert got["b"] == want["b"] and got["c"] == want["c"] and got["f"] == want["f"]
        assert got["d"] == np.float32(want["d"]) and isinstance(got["d"], np.float32)


def test_ndarray_byte_layouts():
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    values = arr.tobytes()
    # dynamic dtype + shape: [dtype code 17] [ndim 2 << 2 | uint8 shapes] [2, 3] [values]
    assert get_encoding("ndarray").encode(arr) == bytes([17, 8, 2, 3]) + values
    assert get_encoding("ndarray:").encode(arr) == bytes([17, 8, 2, 3]) + values
    assert get_encoding("ndarray:int16").encode(arr) == bytes([8, 2, 3]) + values
    assert get_encoding("ndarray:int16:2,3").encode(arr) == values
    wide = np.zeros((1, 300), np.uint8)  # a dimension >= 256: uint16 shapes
    assert get_encoding("ndarray").encode(wide)[:6] == bytes([8, (2 << 2) | 1]) + struct.pack(
        "<2H", 1, 300
    )
    big_endian = np.arange(3, dtype=">i4")  # stored little-endian like every other array
    assert get_encoding("ndarray:int32:3").encode(big_endian) == np.arange(3, dtype="<i4").tobytes()
    decoded = round_trip("ndarray:int32:3", np.arange(3, dtype=np.int32))
    assert decoded.flags.writeable and decoded.flags.owndata  # a copy: torch can share it as is


def test_scalar_layouts_and_sizes():
    assert get_encoding("int").encode(-2) == struct.pack("<q", -2)
    assert get_encoding("uint16").encode(513) == b"\x01\x02"
    assert get_encoding("float16").encode(0.5) == np.float16(0.5).tobytes()
    assert get_encoding("str_decimal").encode(Decimal("1.10")) == b"1.10"
    assert get_encoding("str_float").encode(0.1) == b"0.1"
    sizes = {
        name: get_encoding(name).size
        for name in ("int", *NDARRAY_DTYPES, "str", "ndarray:int8:2,5")
    }
    assert (
        sizes["int"] == 8 and sizes["uint8"] == 1 and sizes["float64"] == 8 and sizes["uint16"] == 2
    )
    assert sizes["str"] is None and sizes["ndarray:int8:2,5"] == 10
    assert round_trip("int", 7) == 7 and type(round_trip("int", 7)) is int


def test_list_and_jpeg_array_layouts():
    image = Image.new("L", (2, 1), 7)
    pil = get_encoding("pil").encode(image)
    assert pil == struct.pack("<3I", 2, 1, 1) + b"L" + b"\x07\x07"
    assert get_encoding("list[pil]").encode([image]) == struct.pack("<3I", 0, 1, len(pil)) + pil
    assert get_encoding("jpeg_array").encode([b"ab", b"c"]) == struct.pack("<3I", 2, 2, 1) + b"abc"


def test_jpeg_from_a_file_is_stored_as_that_file(tmp_path):
    path = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, quality=50)
    with Image.open(path) as image:
        assert get_encoding("jpeg").encode(image) == path.read_bytes()


@pytest.mark.parametrize(
    ("encoding", "value", "needle"),
    [
        ("str", 5, "expected str, got int 5"),
        ("bytes", "text", "expected bytes, got str"),
        ("int", "7", "expected an int"),
        ("int", 2**63, "fits int64"),
        ("uint8", 256, "expected a uint8 in [0, 255], got 256"),
        ("int8", 1.5, "an integer for int8"),
        ("float32", "1.0", "a real number for float32"),
        ("str_int", True, "expected an int"),
        ("str_float", "1", "expected a float"),
        ("str_decimal", 1.5, "expected a decimal.Decimal"),
        ("json", {1, 2}, "JSON-serializable"),
        ("pkl", lambda: 1, "picklable"),
        ("ndarray", [1, 2], "expected a numpy.ndarray, got list"),
        ("ndarray", np.zeros(2, bool), "got dtype bool"),
        ("ndarray", np.zeros(0, np.int8), "non-empty"),
        ("ndarray", np.array(3, np.int8), "1 to 63 dimensions"),
        ("ndarray:int32", np.zeros(2, np.int64), "expected dtype int32, got int64"),
        ("ndarray:int32:2", np.zeros(3, np.int32), "expected shape (2,), got (3,)"),
        ("ndarray:int32:2", b"\x00" * 7, "expected 8 encoded bytes, got 7"),
        ("jpeg", np.zeros((2, 2)), "expected a PIL.Image.Image"),
        ("jpeg", Image.new("RGBA", (2, 2)), "cannot save a RGBA image as JPEG"),
        ("list[png]", Image.new("L", (1, 1)), "expected a list"),
        ("jpeg_array", [], "non-empty list"),
    ],
)
def test_wrong_values_raise_sample_error(encoding, value, needle):
    with pytest.raises(SampleError) as err:
        encode_value("col", get_encoding(encoding), value)
    message = str(err.value)
    assert "column 'col'" in message and f"encoding '{encoding}'" in message and needle in message


def test_bytes_are_taken_as_already_encoded():
    """As in mosaicml-streaming: a bytes value is stored as given (e.g. JPEG files for `jpeg`)."""
    assert encode_value("c", get_encoding("jpeg"), b"\xff\xd8raw") == b"\xff\xd8raw"
    assert encode_value("c", get_encoding("uint16"), b"\x01\x02") == b"\x01\x02"


@pytest.mark.parametrize(
    "name",
    ["nope", "int:5", "ndarray:bool", "ndarray:int8:0", "ndarray:int8:2:3", "ndarray:int8:x", 5],
)
def test_unknown_encodings(name):
    with pytest.raises((ValueError, TypeError)):
        get_encoding(name)


def test_every_mosaicml_encoding_name_is_known():
    names = {
        "bytes",
        "str",
        "int",
        "ndarray",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
    }
    names |= {"int32", "int64", "float16", "float32", "float64", "str_int", "str_float"}
    names |= {"str_decimal", "pil", "jpeg", "jpeg_array", "jpegarray", "png", "list[pil]"}
    names |= {"list[jpeg]", "list[png]", "pkl", "json"}
    assert set(ENCODINGS) == names
    assert [n for n in names if not get_encoding(n).safe] == ["pkl"]


def test_images_without_pillow_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # makes `import PIL.Image` fail
    with pytest.raises(ModuleNotFoundError, match="streaming\\[images\\]"):
        get_encoding("png").decode(memoryview(b"\x89PNG"))
    with pytest.raises(ModuleNotFoundError, match="Pillow"):
        encode_value("c", get_encoding("png"), object())


def test_decoded_images_are_pil(tmp_path):
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    png = get_encoding("png").encode(image)
    assert Image.open(io.BytesIO(png)).tobytes() == image.tobytes()
    assert round_trip("png", image).format == "PNG"
