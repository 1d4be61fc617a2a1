"""Writing what a user keeps: whole files and whole folders appear at once, or not at all.

Every txkit command writes its outputs through this module:

- `open_atomic` / `write_text` / `write_bytes` / `writing_path` write a file under a temporary name in the
  same folder and rename it into place when complete (a reader never sees half a file);
- `building_dir` + `replace_dir` build a folder under a temporary name and swap it in atomically
  (`renameat2(RENAME_EXCHANGE)` on Linux: at every instant the final name holds the old or the new folder);
- `check_output_file` / `check_output_dir` refuse, before any slow work, an output that cannot be written
  or that is one of the command's inputs (same resolved path, hard links included).

Temporary names are `.{name}.txkit-{pid}-{random}` (`tempfile` picks the random part and creates the name
exclusively), so they never collide with a user's files; txkit deletes only temporaries it created: the
ones this process registered, or, after a crash, ones whose process id no longer runs. SIGTERM (and SIGINT,
through KeyboardInterrupt) removes this process's temporaries before the process ends.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from txkit.errors import TxkitError

_MARK = ".txkit-"
_lock = threading.Lock()
_created: set[str] = set()  # temporaries of this process that still exist
_handlers_installed = False


# ----------------------------------------------------------------------------- temporaries and signals


def _prefix(final: Path) -> str:
    return f".{final.name}{_MARK}{os.getpid()}-"


def _stale_re(final_name: str) -> re.Pattern:
    return re.compile(re.escape(f".{final_name}{_MARK}") + r"(\d+)-")


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _register(path: str) -> None:
    _install_handlers()
    with _lock:
        _created.add(path)


def _forget(path: str) -> None:
    with _lock:
        _created.discard(path)


def cleanup() -> None:
    """Delete every temporary this process created and has not renamed into place yet."""
    with _lock:
        paths = list(_created)
        _created.clear()
    for path in paths:
        _remove(path)


def _on_sigterm(signum, frame) -> None:
    cleanup()
    # End as the signal would have ended us (exit status 128+15 to the shell), without Python's cleanup.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """On the first temporary: SIGTERM cleans up, then ends the process as SIGTERM does. Only where nobody
    installed a handler of their own, and only from the main thread (where Python allows it)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(cleanup)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _on_sigterm)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only swap it, which
    would briefly change it for every other thread); elsewhere swapped and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(final: Path, default: int) -> int:
    """The mode the finished output gets: the one it replaces keeps its mode; a new one gets what `open` or
    `mkdir` would give it (default & ~umask). `tempfile` creates temporaries private (0600 / 0700), and a
    model folder that only its writer can read cannot be served or shared by another account."""
    with contextlib.suppress(OSError):
        return final.stat().st_mode & 0o7777
    return default & ~_umask()


def temp_file(final: str | os.PathLike) -> Path:
    """Create an empty, uniquely named temporary file next to `final` (registered for cleanup; private until
    `writing_path` gives it its final mode)."""
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    _register(name)
    return Path(name)


def temp_dir(final: str | os.PathLike) -> Path:
    """Create an empty, uniquely named temporary folder next to `final` (registered for cleanup; private until
    `building_dir` gives it its final mode)."""
    final = Path(final)
    name = tempfile.mkdtemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent)
    _register(name)
    return Path(name)


def discard(path: str | os.PathLike) -> None:
    """Delete a temporary this process created (no-op for anything else)."""
    path = str(path)
    with _lock:
        ours = path in _created
        _created.discard(path)
    if ours:
        _remove(path)


def clean_stale(final: str | os.PathLike) -> list[Path]:
    """Delete temporaries of `final` left by txkit processes that no longer run (a SIGKILL, a power cut)."""
    final = Path(final)
    pattern = _stale_re(final.name)
    removed = []
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not _pid_alive(int(m.group(1))) and str(entry) not in _created:
            _remove(str(entry))
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def writing_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `final` for a writer that takes a path (safetensors, matplotlib);
    renamed to `final` when the block ends without an exception, deleted otherwise."""
    final = Path(final)
    tmp = temp_file(final)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(final, 0o666))  # set when written: a read-only mode could stop the writer
        os.replace(tmp, final)
        _forget(str(tmp))
    finally:
        discard(tmp)


@contextlib.contextmanager
def open_atomic(final: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """`open(final, mode)` that shows `final` only complete: written under a temporary name, renamed at the end."""
    if "b" in mode:
        encoding = None
    with writing_path(final) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def write_text(final: str | os.PathLike, text: str) -> None:
    """Write a whole UTF-8 text file atomically."""
    with open_atomic(final, "w") as fh:
        fh.write(text)


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write a whole binary file atomically."""
    with open_atomic(final, "wb") as fh:
        fh.write(data)


# ----------------------------------------------------------------------------- folders


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel, or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the complete folder `tmp` at `final`, replacing a folder already there.

    Atomic where the kernel can exchange two names; elsewhere the old folder is first moved to a unique
    temporary name (brought back by `recover_dir` if the process dies between the two renames). Nothing
    but `tmp` and the old `final` is touched."""
    tmp, final = Path(tmp), Path(final)
    if final.is_dir() and not final.is_symlink():
        if _exchange(tmp, final):
            _remove(str(tmp))  # now the old folder
            _forget(str(tmp))
            return
        aside = temp_dir(final)
        os.replace(final, aside)  # onto the empty folder just created
        os.replace(tmp, final)
        _forget(str(tmp))
        discard(aside)
        return
    os.replace(tmp, final)
    _forget(str(tmp))


def recover_dir(final: str | os.PathLike) -> None:
    """After a crash inside `replace_dir`'s fallback: bring the old folder back if `final` is missing, and
    delete the temporaries of `final` that dead txkit processes left."""
    final = Path(final)
    if not final.exists():
        pattern = _stale_re(final.name)
        candidates = [e for e in final.parent.iterdir() if pattern.match(e.name) and e.is_dir()] if final.parent.is_dir() else []
        # a complete old folder was moved aside only after the new one was complete: take the newest aside
        for entry in sorted(candidates, key=lambda e: e.stat().st_mtime, reverse=True):
            if (entry / "config.json").is_file() and not _pid_alive(int(pattern.match(entry.name).group(1))):
                os.replace(entry, final)
                break
    clean_stale(final)


@contextlib.contextmanager
def building_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder next to `final`; when the block succeeds it replaces `final`
    (`replace_dir`), when it fails it is deleted and `final` is untouched."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(final)
    except OSError as exc:
        raise TxkitError(f"cannot write {final}: {exc.strerror or exc}") from None
    try:
        yield tmp
        _open_up(tmp)
        os.chmod(tmp, _final_mode(final, 0o777))  # set when built: a read-only mode could stop the builder
        replace_dir(tmp, final)
    finally:
        discard(tmp)


def _open_up(folder: Path) -> None:
    """Give the private files inside a finished folder the mode a new file gets (0666 & ~umask): writers that
    create through a temporary of their own leave them 0600 (safetensors 0.8's `save_file`, so every
    `save_pretrained`), and a model folder's weights must be readable wherever its folder is."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and mode != 0o600:
                    os.chmod(path, mode)


# ----------------------------------------------------------------------------- checking outputs early


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestors(path: Path) -> Iterable[Path]:
    path = Path(os.path.realpath(path))
    yield path
    yield from path.parents


def same_or_inside(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """Whether `inner` is `outer` or lies inside it, by resolved path and by inode (hard links, bind mounts)."""
    outer_id = _identity(Path(outer))
    if outer_id is None:
        return False
    return any(_identity(p) == outer_id for p in _ancestors(Path(inner)))


def _writable_folder(folder: Path, what: str, path: Path) -> None:
    if not folder.exists():
        raise TxkitError(f"{what} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise TxkitError(f"{what} {path}: {folder} is not a folder")
    try:
        probe = temp_file(folder / "probe")
    except OSError as exc:
        raise TxkitError(f"{what} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    discard(probe)


def check_output_file(
    path: str | os.PathLike, what: str, inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()
) -> Path:
    """Fail now, in one line, if the output file `path` (named `what`, e.g. "--json") cannot be written,
    or is one of `inputs` ((name, path) pairs), or lies inside an input folder. Returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise TxkitError(f"{what} {path}: is a directory; give a file name")
    for name, source in inputs:
        if source is None:
            continue
        if not path.exists():
            continue
        if same_or_inside(source, path):
            raise TxkitError(f"{what} {path}: is the same file as {name} {source}; write the output elsewhere")
        if same_or_inside(path, source):
            raise TxkitError(f"{what} {path}: lies inside {name} {source}; write the output elsewhere")
    _writable_folder(path.parent if str(path.parent) else Path("."), what, path)
    return path


def check_output_dir(
    path: str | os.PathLike, what: str, inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()
) -> Path:
    """Fail now if the output folder `path` is a file, cannot be created, is one of the input folders
    `inputs` ((name, path) pairs), contains one (replacing it would delete the input) or lies inside one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TxkitError(f"{what} {path}: exists and is not a folder")
    for name, source in inputs:
        if source is None or not Path(source).exists():
            continue
        if same_or_inside(source, path):
            relation = "is" if same_or_inside(path, source) else "contains"
            raise TxkitError(f"{what} {path}: {relation} {name} {source}; write the output elsewhere")
        if path.exists() and same_or_inside(path, source) or _would_be_inside(path, source):
            raise TxkitError(f"{what} {path}: lies inside {name} {source}; write the output elsewhere")
    folder = next((p for p in Path(os.path.abspath(path)).parents if p.exists()), Path("/"))
    _writable_folder(folder, what, path)
    return path


def _would_be_inside(path: Path, folder: str | os.PathLike) -> bool:
    """Whether the not-yet-existing `path` would be created inside `folder`."""
    existing = next((p for p in [Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents] if p.exists()), None)
    return existing is not None and existing != Path(os.path.abspath(path)) and same_or_inside(existing, folder)
