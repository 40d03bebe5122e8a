"""The README's compatibility table is true: every public name and argument of mosaicml-streaming
0.13 (listed by `SURFACE`, run in its own interpreter) has a row, no row names something it does
not have, and each row's verdict holds for ours:

- `same` / `differs`: the module imports, the name exists, the argument is taken, the member is
  there (how it behaves is tested in the other test_mosaic_* files);
- `refused`: the module or name is absent (or making it raises, saying what to use instead),
  an argument at a value other than its default raises ValueError, a member is absent.

Row keys: `module`, `module.name`, `module.*` (the module and all in it), `Class(argument)`,
`Class.member`, and `{a,b}` to list several in one row.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from pathlib import Path

import pytest

import streaming
from streaming import LocalDataset, MDSWriter, Stream, StreamingDataset

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Compatibility with mosaicml-streaming"
VERDICTS = {"same", "differs", "refused"}

# A value for each argument that is not mosaicml's default, to try on ours.
TRY = {
    "partition_algo": "orig",
    "batching_method": "stratified",
    "stream_name": "other",
    "stream_config": {"x": 1},
    "progress_bar": True,
    "max_workers": 2,
    "retry": 3,
    "exist_ok": True,
    "keep_local": True,
}

SURFACE = r'''
import importlib, inspect, tempfile, warnings

MODULES = ["streaming", "streaming.base", "streaming.base.util", "streaming.base.compression",
    "streaming.base.hashing", "streaming.base.format", "streaming.base.format.index",
    "streaming.base.format.mds", "streaming.base.format.mds.encodings",
    "streaming.base.format.json", "streaming.base.format.xsv", "streaming.base.array",
    "streaming.base.dataset", "streaming.base.stream", "streaming.base.local",
    "streaming.base.dataloader", "streaming.base.distributed", "streaming.base.world",
    "streaming.base.storage", "streaming.base.shared", "streaming.base.partition",
    "streaming.base.shuffle", "streaming.base.batching", "streaming.base.sampling",
    "streaming.base.spanner", "streaming.base.converters", "streaming.base.constant",
    "streaming.base.registry_utils", "streaming.vision", "streaming.text", "streaming.multimodal"]

def surface(path):
    """{name: kind}: modules, their public names, constructor arguments, members."""
    warnings.simplefilter("ignore")
    out = {}
    for name in MODULES:
        out[name] = "module"
        try:
            module = importlib.import_module(name)
        except ImportError:  # needs what is not installed (pyspark): its name is enough
            continue
        public = getattr(module, "__all__", None) or [
            n for n, o in vars(module).items()
            if not n.startswith("_") and getattr(o, "__module__", None) == name]
        for n in public:
            out.setdefault(f"{name}.{n}", "name")
    from streaming import LocalDataset, MDSWriter, Stream, StreamingDataset
    for cls in (StreamingDataset, Stream, MDSWriter, LocalDataset):
        for p in inspect.signature(cls.__init__).parameters:
            if p not in ("self", "args", "kwargs"):
                out[f"{cls.__name__}({p})"] = "argument"
    for p in ("progress_bar", "max_workers", "retry", "exist_ok"):  # MDSWriter's **kwargs
        out[f"MDSWriter({p})"] = "argument"
    dataset = StreamingDataset(local=path, batch_size=1)
    writer = MDSWriter(out=tempfile.mkdtemp() + "/w", columns={"id": "int"})
    for cls, obj in ((StreamingDataset, dataset), (Stream, dataset.streams[0]),
                     (MDSWriter, writer)):
        members = {n for n in vars(obj) if not n.startswith("_")}
        for klass in cls.__mro__:
            if klass.__module__.startswith("streaming"):
                members |= {n for n in vars(klass) if not n.startswith("_")}
        out.update({f"{cls.__name__}.{n}": "member" for n in members})
    writer.finish()
    return out
'''


def _expand(key: str) -> list[str]:
    match = re.search(r"\{([^}]*)\}", key)
    if not match:
        return [key]
    head, tail = key[: match.start()], key[match.end() :]
    return [name for part in match[1].split(",") for name in _expand(head + part.strip() + tail)]


def table() -> dict[str, tuple[str, str]]:
    """{key: (verdict, note)} from the README's compatibility section (keys expanded)."""
    text = README.read_text()
    assert SECTION in text, f"the README has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        verdict, note = cells[1], cells[2]
        assert verdict in VERDICTS, f"row {cells[0]}: verdict {verdict!r} not in {VERDICTS}"
        assert note or verdict == "same", f"row {cells[0]} says {verdict} but not how or why"
        for key in _expand(cells[0].strip("`")):
            assert key not in rows, f"two rows for {key}"
            rows[key] = (verdict, note)
    return rows


def _covering(name: str, rows: dict) -> str | None:
    if name in rows:
        return name
    for key in rows:
        if key.endswith(".*") and (name == key[:-2] or name.startswith(key[:-1])):
            return key
    return None


@pytest.fixture(scope="module")
def theirs(mosaic, tmp_path_factory):
    path = tmp_path_factory.mktemp("surface") / "ds"
    with MDSWriter(out=str(path), columns={"id": "int"}) as writer:
        for i in range(3):
            writer.write({"id": i})
    return mosaic.call(SURFACE + "\nresult = surface(args)\n", str(path)), path


def test_every_public_name_of_mosaic_has_one_row_and_no_row_is_stale(theirs):
    surface, _ = theirs
    rows = table()
    assert len(surface) > 250
    missing = sorted(name for name in surface if _covering(name, rows) is None)
    assert not missing, f"no row for {missing}"
    used = {_covering(name, rows) for name in surface}
    stale = sorted(set(rows) - used)
    assert not stale, f"rows for what mosaicml-streaming does not have: {stale}"


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _name_exists(path: str) -> bool:
    module, _, attr = path.rpartition(".")
    found = _module(module)
    return found is not None and hasattr(found, attr)


def _refused_name(path: str) -> bool:
    if not _name_exists(path):
        return _module(path) is None
    module, _, attr = path.rpartition(".")
    value = getattr(_module(module), attr)
    try:
        value()
    except (NotImplementedError, streaming.errors.StreamingError):
        return True  # present, but making one says what to use instead
    return False


def _takes(cls: type, argument: str, dataset: Path, tmp: Path) -> bool | None:
    """True if ours takes `argument` at a non-default value, False if it refuses it with a
    ValueError, None if it is only in the signature (nothing to try it with)."""
    if argument not in TRY:
        return True if argument in inspect.signature(cls).parameters else None
    kwargs = {argument: TRY[argument]}
    try:
        if cls is StreamingDataset:
            StreamingDataset(local=str(dataset), batch_size=1, **kwargs)
        elif cls is MDSWriter:
            MDSWriter(out=str(tmp / argument), columns={"id": "int"}, **kwargs).abort()
        else:
            cls(local=str(dataset), **kwargs)
    except ValueError:
        return False
    return True


def test_each_rows_verdict_holds_for_ours(theirs, tmp_path):
    surface, dataset = theirs
    rows = table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = {
            "StreamingDataset": StreamingDataset(local=str(dataset), batch_size=1),
            "MDSWriter": MDSWriter(out=str(tmp_path / "w"), columns={"id": "int"}),
        }
        ours["Stream"] = ours["StreamingDataset"].streams[0]
        classes = {c.__name__: c for c in (StreamingDataset, Stream, MDSWriter, LocalDataset)}
        wrong = []
        for name, kind in sorted(surface.items()):
            key = _covering(name, rows)
            if key is None:  # reported by the test above
                continue
            verdict = rows[key][0]
            given = verdict != "refused"
            if kind == "module":
                holds = (_module(name) is not None) == given
            elif kind == "name":
                holds = _name_exists(name) if given else _refused_name(name)
            elif kind == "argument":
                cls, argument = name[:-1].split("(")
                took = _takes(classes[cls], argument, dataset, tmp_path)
                holds = took is True if given else took is False
            else:
                cls, member = name.split(".")
                holds = hasattr(ours[cls], member) == given
            if not holds:
                wrong.append(f"{name}: {verdict}")
        ours["MDSWriter"].abort()
    assert not wrong, "rows that are not true of ours: " + "; ".join(wrong)


def test_the_table_covers_mosaics_modules_we_do_not_ship():
    """A refused module is really absent: importing it fails with its name."""
    for key, (verdict, _) in table().items():
        if key.endswith(".*") and verdict == "refused":
            with pytest.raises(ImportError):
                importlib.import_module(key[:-2])
