"""Atomic file writes and content hashing shared by every stage that writes files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import __version__, jsonout
from .errors import UserError


def _tmp_prefix(path: Path, pid: int | None = None) -> str:
    """Temporary files of `path` are `.<name>.<host>-<pid>.<random>.tmp`: the owner can be told apart."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]
    return f".{path.name}.{host}-{os.getpid() if pid is None else pid}."


def _sweep_stale(path: Path) -> None:
    """Remove temporary files of `path` left by a killed writer (same host, process gone); never a live one."""
    prefix = _tmp_prefix(path, 0)[:-2]  # '.<name>.<host>-'
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # the writer is gone: its temporary file can never be completed
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass
        except (PermissionError, OverflowError, OSError):
            pass  # alive (another user's process) or not a pid: leave it


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically, on error it is removed.

    A reader sees the old file or the new one, never a torn one: the new bytes are written to the temporary
    file, fsynced, renamed over `path`, and the folder is fsynced. Temporary files left by a writer that was
    killed (SIGKILL, power cut) are removed by the next write of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; written files get the usual permissions
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask)  # writers that recreate the file (safetensors) would leave it 0600
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically, through a file handle: the archive's records are named 'archive/...', so the
    same object gives the same bytes wherever it is written (a path would name them after the temporary file)."""
    import torch  # startup cost: the label store imports this module, and the dashboard's first page needs no torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted strict JSON (NaN/Infinity as null with a reason) to `path` atomically."""
    write_text_atomic(path, jsonout.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, unreadable: str) -> Any:
    """The JSON document at `path`; UserError(`unreadable`) when it is missing, not UTF-8 or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(unreadable) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON form of `obj`."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------- output folders as transactions

COMPLETE_MARKER = ".artifix-complete.json"  # written last inside a finished output folder: its files and their hashes
_TEXT_SUFFIXES = {".json", ".md", ".xml", ".txt", ".csv", ".html"}
_KINDS = (".tmpdir", ".trash")


def _owner(target: Path, name: str) -> int | None:
    """The pid that owns a temporary sibling `name` of `target` on this host, else None (not one of ours)."""
    prefix = _tmp_prefix(target, 0)[:-2]  # '.<name>.<host>-'
    if not (name.startswith(prefix) and name.endswith(_KINDS)):
        return None
    pid = name[len(prefix):].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts as alive until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on `folder` (serialises recovery and swaps of its children; released on kill)."""
    try:
        import fcntl  # optional: POSIX only (Windows has no flock)

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # pragma: no cover - platforms without flock or directory fds
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _recover(target: Path) -> None:
    """Undo what a killed writer of `target` left: restore a set-aside old output, remove its temporaries."""
    try:
        names = sorted(os.listdir(target.parent), key=lambda n: not n.endswith(".trash"))
    except OSError:
        return
    for name in names:
        pid = _owner(target, name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        stale = target.parent / name
        if name.endswith(".trash") and not os.path.lexists(target):
            os.rename(stale, target)  # killed between its two renames: the earlier complete output comes back
        else:
            _rmtree(stale)
    fsync_dir(target.parent)


def recover_output_folder(target: str | os.PathLike) -> None:
    """Make `target` the previous or the new complete output again after a killed writer; remove stale temporaries."""
    target = Path(os.path.abspath(target))
    if target.parent.is_dir():
        with _locked(target.parent):
            _recover(target)


def folder_is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is a finished output folder: its marker lists exactly its files, with matching SHA-256."""
    path = Path(path)
    try:
        listed = json.loads((path / COMPLETE_MARKER).read_text())["files"]
        present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER}
        return set(listed) == present and all(sha256_file(path / rel) == h for rel, h in listed.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_output_folder(target: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse (UserError) an output folder that is a file or holds files artifix did not write; returns it."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{what} {target} is a file; give a folder (it is created, or replaced when complete).")
    if target.is_dir() and any(target.iterdir()) and not (target / COMPLETE_MARKER).is_file():
        raise UserError(f"{what} {target} already holds files but no {COMPLETE_MARKER}, so artifix did not write it (or an "
                        "older version did) and will not replace it; give a new or empty folder, or remove this one.")
    here = Path.cwd().resolve()
    if target.resolve() == here or target.resolve() in here.parents:
        raise UserError(f"{what} {target} is the current folder or holds it; give a folder inside it, e.g. {what} results.")
    return target


class OutputFolder:
    """An output folder being written: write into `path` (a hidden sibling); `target` is where it lands when complete."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target, self.path = target, path

    def final(self, obj: Any) -> Any:
        """`obj` (str, Path, dict, list, tuple) with paths inside the temporary folder pointing into `target`."""
        tmp, dst = str(self.path), str(self.target)
        if isinstance(obj, Path):
            return Path(str(obj).replace(tmp, dst))
        if isinstance(obj, str):
            return obj.replace(tmp, dst)
        if isinstance(obj, dict):
            return {k: self.final(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.final(v) for v in obj)
        return obj


def _carry(old: Path, new: Path, owns: set[str]) -> None:
    """Hard-link (else copy) the earlier output's entries that this command does not write into the new folder."""
    for entry in old.iterdir():
        if entry.name in owns or entry.name == COMPLETE_MARKER:
            continue
        copy = _link_or_copy
        if entry.is_dir():
            shutil.copytree(entry, new / entry.name, copy_function=copy)
        else:
            copy(str(entry), str(new / entry.name))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _seal(folder: OutputFolder, command: str) -> None:
    """Point recorded paths at the target, fsync every file and write the completion marker last."""
    tmp, dst = str(folder.path), str(folder.target)
    files: dict[str, str] = {}
    for p in sorted(folder.path.rglob("*")):
        if not p.is_file() or p.name == COMPLETE_MARKER:
            continue
        if p.suffix in _TEXT_SUFFIXES and p.stat().st_size < (16 << 20):
            raw = p.read_bytes()
            fixed = raw.replace(tmp.encode(), dst.encode()).replace(json.dumps(tmp)[1:-1].encode(), json.dumps(dst)[1:-1].encode())
            if fixed != raw:
                write_bytes_atomic(p, fixed)
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
        files[p.relative_to(folder.path).as_posix()] = sha256_file(p)
    for d in sorted({p.parent for p in folder.path.rglob("*")}, key=lambda q: -len(q.parts)):
        fsync_dir(d)
    write_json_atomic(folder.path / COMPLETE_MARKER, {"artifix_version": __version__, "command": command, "files": files})


def _swap_in(folder: OutputFolder) -> None:
    """Rename the sealed folder into place; an earlier output is set aside first and deleted after."""
    target = folder.target
    trash = None
    if os.path.lexists(target):
        trash = target.parent / f"{_tmp_prefix(target)}{os.urandom(4).hex()}.trash"
        os.rename(target, trash)
    os.rename(folder.path, target)
    fsync_dir(target.parent)
    if trash is not None:
        _rmtree(trash)


@contextmanager
def output_folder(target: str | os.PathLike, *, owns: Iterator[str] | list[str] | None = None,
                  command: str = "") -> Iterator[OutputFolder]:
    """Write an output folder as a transaction: into a hidden sibling, renamed into place only when complete.

    An earlier complete output stays intact until the new one is complete; a killed writer leaves at most a
    hidden temporary that the next write of the same target removes (or, when killed between the two renames
    of the swap, the earlier output is put back). `owns` names the entries this command writes: the earlier
    output's other entries are carried over (for folders several commands share, like artifix-out); without
    it the folder is replaced as a whole. The marker `.artifix-complete.json` is written last.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):
        _recover(target)
    check_output_folder(target)
    tmp = target.parent / f"{_tmp_prefix(target)}{os.urandom(4).hex()}.tmpdir"
    tmp.mkdir()
    os.chmod(tmp, 0o777 & ~_umask())
    folder = OutputFolder(target, tmp)
    try:
        if owns is not None and target.is_dir():
            _carry(target, tmp, set(owns))
        yield folder
        _seal(folder, command)
        with _locked(target.parent):
            _swap_in(folder)
    except BaseException:
        _rmtree(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
