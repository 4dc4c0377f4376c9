"""Paths and URIs alike: local folders, ``s3://`` and ``gs://`` through pyarrow's filesystems.

Every stage reads and writes through these helpers where a path may be a URI (curation inputs and
outputs, token blocks, the pretraining run folder). A local path takes the same code path as before
(``pathlib``/``os``, renames for atomic writes); a URI goes to ``pyarrow.fs.FileSystem.from_uri``, the
resolver Ray Data and Ray Train use too, so one URI means the same thing to every component.

Credentials and endpoints come from the standard environment of the process, as pyarrow reads them:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or a profile, or an instance role), ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for another S3 API (MinIO,
a local test server; checked with pyarrow 26, which honors both); GCS uses Google's default credentials.
Ray workers resolve URIs themselves, so those variables must be set on every node (the cluster's
environment or ``runtime_env={"env_vars": ...}``). Object stores have no folders and no renames: a
"folder" is a key prefix, a single-object write is atomic by itself, and a folder upload is not (so
uploads put the files a reader checks for, such as ``config.json`` or ``_SUCCESS``, last). Bytes are
moved as they are: pyarrow's streams would otherwise (de)compress by file extension, and a ``.gz``
input would be stored gzipped twice.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "is_uri",
    "join",
    "name",
    "filesystem",
    "exists",
    "isfile",
    "isdir_nonempty",
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "open_input",
    "listdir",
    "glob",
    "find",
    "makedirs",
    "rmtree",
    "copy_dir",
    "upload_dir",
    "download_dir",
    "local_dir_for",
]

_BUCKET_SCHEMES = ("s3", "gs", "gcs")
_FILESYSTEMS: dict[str, object] = {}


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``file://``); False for a plain local path."""
    return "://" in str(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` without collapsing the ``//`` of a URI (``Path("s3://b")`` would)."""
    if not is_uri(base):
        return os.path.join(str(base), *parts)
    out = str(base).rstrip("/")
    for part in parts:
        if part:
            out = f"{out}/{str(part).strip('/')}"
    return out


def name(path: str | os.PathLike) -> str:
    """The last component of a path or URI."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def filesystem(path: str | os.PathLike):
    """``(pyarrow filesystem, path on it)``; one filesystem per bucket and process (no re-resolving)."""
    import pyarrow.fs as pafs

    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    if scheme.lower() not in _BUCKET_SCHEMES:
        return pafs.FileSystem.from_uri(path)
    bucket = rest.split("/", 1)[0]
    key = f"{scheme.lower()}://{bucket}"
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = pafs.FileSystem.from_uri(key)[0]
    return _FILESYSTEMS[key], rest.rstrip("/")


def _info(path: str):
    fs, fs_path = filesystem(path)
    return fs.get_file_info(fs_path)


def exists(path: str | os.PathLike) -> bool:
    """A file or a non-empty prefix exists at ``path``."""
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs as pafs

    return _info(str(path)).type != pafs.FileType.NotFound


def isfile(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return os.path.isfile(path)
    import pyarrow.fs as pafs

    return _info(str(path)).type == pafs.FileType.File


def isdir_nonempty(path: str | os.PathLike) -> bool:
    """A folder (or key prefix) holding at least one entry."""
    if not is_uri(path):
        if not os.path.isdir(path):
            return False
        with os.scandir(path) as entries:
            return any(entries)
    import pyarrow.fs as pafs

    fs, fs_path = filesystem(path)
    if fs.get_file_info(fs_path).type != pafs.FileType.Directory:
        return False
    return bool(fs.get_file_info(pafs.FileSelector(fs_path, allow_not_found=True)))


def read_bytes(path: str | os.PathLike) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, fs_path = filesystem(path)
    with fs.open_input_stream(fs_path, compression=None) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file: a temporary name and a rename locally, one PUT on an object store."""
    if not is_uri(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, fs_path = filesystem(path)
    with fs.open_output_stream(fs_path, compression=None) as f:
        f.write(data)


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


class _RawNative(io.RawIOBase):
    """A pyarrow input stream as a raw Python stream (pyarrow's own has no ``readline``)."""

    def __init__(self, native):
        self.native = native

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.native.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.native.close()
        super().close()


def open_input(path: str | os.PathLike, *, buffer_bytes: int = 1 << 20) -> BinaryIO:
    """A buffered binary stream over the file (local: ``open``; URI: one streaming GET), for reading."""
    if not is_uri(path):
        return open(path, "rb")  # noqa: SIM115 - returned to the caller
    fs, fs_path = filesystem(path)
    return io.BufferedReader(
        _RawNative(fs.open_input_stream(fs_path, compression=None)), buffer_size=buffer_bytes
    )


def open_random_access(path: str | os.PathLike):
    """A seekable pyarrow file (Parquet footers), local or remote."""
    fs, fs_path = filesystem(path)
    return fs.open_input_file(fs_path)


def _walk(path: str) -> list:
    """Every file under ``path`` (recursive) as pyarrow ``FileInfo``s, sorted by path."""
    import pyarrow.fs as pafs

    fs, fs_path = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(fs_path, recursive=True, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names of the entries directly in a folder (sorted; [] when it does not exist)."""
    if not is_uri(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    import pyarrow.fs as pafs

    fs, fs_path = filesystem(path)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(fs_path, allow_not_found=True)))


def _glob_regex(pattern: str) -> re.Pattern:
    """``glob.glob(..., recursive=True)`` semantics on ``/``-separated keys: ``**/`` is any number of
    folders, ``*`` and ``?`` stay inside one component, ``[...]`` as in fnmatch."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append(r"(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(r".*")
            i += 2
        elif pattern[i] == "*":
            out.append(r"[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])  # fnmatch's class, unwrapped
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def find(root: str | os.PathLike, pattern: str) -> list[tuple[str, int]]:
    """``(path, size)`` of the files under ``root`` matching the glob ``pattern``, sorted by path.

    Local: ``glob.glob`` (absolute paths, ``**`` recursive), exactly as before. URI: one recursive
    listing below the pattern's literal folder prefix, matched with glob's rules; paths keep the scheme.
    """
    if not is_uri(root):
        import glob as _glob

        pattern_path = os.path.abspath(os.path.join(str(root), pattern))
        out = []
        for path in sorted(_glob.glob(pattern_path, recursive=True)):
            info = os.stat(path)
            if not os.path.isdir(path):
                out.append((path, info.st_size))
        return out
    parts = pattern.split("/")
    literal = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        literal.append(part)
    base = join(str(root), *literal)
    regex = _glob_regex("/".join(parts[len(literal) :]))
    fs, base_fs = filesystem(base)
    prefix = str(base).rstrip("/")
    out = []
    for info in _walk(base):
        rel = info.path[len(base_fs) :].lstrip("/")
        if regex.match(rel) and not any(c.startswith(".") for c in rel.split("/")):
            out.append((f"{prefix}/{rel}", info.size))
    return out


def glob(root: str | os.PathLike, pattern: str) -> list[str]:
    """Paths under ``root`` matching ``pattern`` (see :func:`find`)."""
    return [path for path, _ in find(root, pattern)]


def makedirs(path: str | os.PathLike) -> None:
    """Create the folder (a no-op on object stores, which have none)."""
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, fs_path = filesystem(path)
    fs.create_dir(fs_path, recursive=True)


def rmtree(path: str | os.PathLike) -> None:
    """Delete a folder and everything under it (nothing there: a no-op)."""
    if not is_uri(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    import pyarrow.fs as pafs

    fs, fs_path = filesystem(path)
    info = fs.get_file_info(fs_path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(fs_path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(fs_path)


def _ordered(files: list[str], last: Iterable[str]) -> list[str]:
    """``files`` with those whose name is in ``last`` moved to the end, in the order ``last`` gives."""
    last = list(last)
    rank = {n: i for i, n in enumerate(last)}
    return sorted(files, key=lambda f: (Path(f).name in rank, rank.get(Path(f).name, 0), f))


def upload_dir(
    local: str | os.PathLike,
    target: str | os.PathLike,
    *,
    last: Iterable[str] = (),
    skip: Iterable[str] = (),
) -> list[str]:
    """Copy the files of local folder ``local`` to ``target`` (a URI or a local path); return them.

    Args:
        local: The folder to copy (its relative layout is kept).
        target: Where it goes; existing files of the same name are replaced, others are left.
        last: File names uploaded after all others (``config.json``, ``_SUCCESS``): what a reader checks
            for is there only when everything else is.
        skip: Relative paths (``/``-separated) not to upload.
    """
    local = Path(local)
    skip = set(skip)
    files = [
        str(p.relative_to(local).as_posix())
        for p in sorted(local.rglob("*"))
        if p.is_file() and p.relative_to(local).as_posix() not in skip
    ]
    for rel in _ordered(files, last):
        write_bytes(join(str(target), *rel.split("/")), (local / rel).read_bytes())
    return files


def download_dir(source: str | os.PathLike, local: str | os.PathLike) -> list[str]:
    """Copy every file under ``source`` into local folder ``local``; return their relative paths."""
    local = Path(local)
    if not is_uri(source):
        shutil.copytree(source, local, dirs_exist_ok=True)
        return [str(p.relative_to(local).as_posix()) for p in local.rglob("*") if p.is_file()]
    fs, fs_path = filesystem(source)
    rels = []
    for info in _walk(str(source)):
        rel = info.path[len(fs_path) :].lstrip("/")
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path, compression=None) as f:
            dest.write_bytes(f.read())
        rels.append(rel)
    return rels


def copy_dir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Replace folder ``target`` by a copy of ``source`` (same or different filesystems).

    Within one bucket the objects are copied by the store itself (S3 ``CopyObject``: no download),
    ``config.json`` last."""
    if not is_uri(source) and not is_uri(target):
        tmp = f"{target}.tmp-{os.getpid()}"
        rmtree(tmp)
        shutil.copytree(source, tmp)
        rmtree(target)
        os.replace(tmp, target)
        return
    src_fs, src_path = filesystem(source)
    dst_fs, dst_path = filesystem(target)
    if is_uri(source) and src_fs is dst_fs:
        rmtree(target)
        rels = [info.path[len(src_path) :].lstrip("/") for info in _walk(str(source))]
        for rel in _ordered(rels, ("config.json",)):
            src_fs.copy_file(f"{src_path}/{rel}", f"{dst_path}/{rel}")
        return
    with tempfile.TemporaryDirectory(prefix="clinray_copy_") as tmp:
        download_dir(source, tmp)
        rmtree(target)
        upload_dir(tmp, target, last=("config.json",))


@contextlib.contextmanager
def local_dir_for(target: str | os.PathLike, *, last: Iterable[str] = ("config.json",)) -> Iterator[Path]:
    """A local folder path to write ``target`` into: ``target`` itself when it is local; for a URI a
    fresh temporary path whose contents replace ``target`` when the block ends (nothing is uploaded
    when the block wrote nothing, or raised), and which is then removed.

    For writers that only know local files (HF ``save_pretrained``, safetensors, matplotlib)."""
    if not is_uri(target):
        yield Path(target)
        return
    with tempfile.TemporaryDirectory(prefix="clinray_stage_") as tmp:
        staged = Path(tmp) / name(str(target))
        yield staged
        if staged.is_dir() and any(staged.iterdir()):
            rmtree(target)
            upload_dir(staged, target, last=last)
        elif staged.is_file():
            write_bytes(target, staged.read_bytes())
