"""Walking a directory tree that a hostile job keeps changing: by descriptor, never by path.

Directories are entered with ``openat(parent, name, O_NOFOLLOW | O_DIRECTORY)``; symbolic links are
never followed; files and directories that vanish during the walk are skipped; a deep tree holds a
bounded number of descriptors (ancestors are re-opened through ``..`` and checked by identity). Used by
the output cap (``outputs.py``): see its module documentation for the threat model.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Ident", "directory_usage", "inode_of", "tree_usage", "walk"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Directory descriptors a walk holds at most besides the output directory's own (the innermost
# directories of the current path); deeper trees re-open their ancestors through "..".
_MAX_HELD_FDS = 64

Ident = tuple[int, int]  # (st_dev, st_ino)


def inode_of(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


# --- the walk ---------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """A directory on the walk's current path."""

    parts: tuple[str, ...]
    """Names from the output directory down to this one."""
    ident: Ident
    fd: int
    """Open descriptor, or -1 while closed (only ever for directories in the middle of a deep path)."""
    todo: list[str] | None = None
    """Subdirectories still to enter, once listed."""


def _open_dir(dir_fd: int, name: str) -> int | None:
    """Open a subdirectory without following a link; None if it is gone or not a directory."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link now: not followed
            return None
        raise


def _close(frame: _Frame) -> None:
    if frame.fd >= 0:
        os.close(frame.fd)
        frame.fd = -1


def _reopen_by_name(stack: list[_Frame], index: int) -> None:
    """Open ``stack[index]`` by walking down from the output directory, checking every step.

    If a directory on the way is gone or is no longer the one the walk entered, the frames from there
    down are given up (marked done and left closed): the tree was moved under the walk.
    """
    cur = stack[0].fd
    for k in range(1, index + 1):
        frame = stack[k]
        fd = _open_dir(cur, frame.parts[-1])
        if fd is not None and inode_of(os.fstat(fd)) != frame.ident:
            os.close(fd)
            fd = None
        if cur != stack[0].fd:
            os.close(cur)
        if fd is None:
            for lost in stack[k : index + 1]:
                lost.todo = []
            return
        cur = fd
    stack[index].fd = cur


def walk(root: Path) -> Generator[tuple[int, tuple[str, ...], os.DirEntry[str]], None, None]:
    """Every entry under ``root`` that is not a directory, as (directory fd, directory parts, entry).

    The directory descriptor is valid until the consumer asks for the next entry; ``entry.stat()``
    and ``os.*(entry.name, dir_fd=fd)`` work on the entry through it. A ``root`` that is missing, not
    a directory or a symbolic link yields nothing. Use under ``contextlib.closing`` so that an early
    exit closes the descriptors at once.
    """
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return
        raise
    stack = [_Frame((), inode_of(os.fstat(root_fd)), root_fd)]
    low = 1  # frames stack[low:] are open (and stack[0], always); those in between are closed
    try:
        while stack:
            top = stack[-1]
            if top.todo is None:
                top.todo = []
                with os.scandir(top.fd) as listing:
                    for entry in listing:
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if is_dir:
                            top.todo.append(entry.name)
                        else:
                            yield top.fd, top.parts, entry
                top.todo.reverse()  # entered in listing order
            if top.todo and top.fd >= 0:
                name = top.todo.pop()
                child = _open_dir(top.fd, name)
                if child is not None:
                    stack.append(_Frame((*top.parts, name), inode_of(os.fstat(child)), child))
                    if len(stack) - low > _MAX_HELD_FDS:
                        _close(stack[low])
                        low += 1
                continue
            # Done with this directory: go back up to its parent.
            stack.pop()
            if not stack:
                _close(top)
                break
            parent_index = len(stack) - 1
            parent = stack[parent_index]
            if parent.fd < 0:
                fd = _open_dir(top.fd, "..") if top.fd >= 0 else None
                if fd is not None and inode_of(os.fstat(fd)) == parent.ident:
                    parent.fd = fd
                else:
                    if fd is not None:
                        os.close(fd)
                    _reopen_by_name(stack, parent_index)
                low = parent_index
            _close(top)
    finally:
        for frame in stack:
            _close(frame)


# --- usage ------------------------------------------------------------------------------------------


def tree_usage(paths: Sequence[Path], stop_above: int | None = None) -> int:
    """Bytes of the regular files under ``paths``; stops early once the total is over ``stop_above``."""
    seen: set[Ident] = set()
    total = 0
    for root in paths:
        with contextlib.closing(walk(root)) as entries:
            for _dir_fd, _parts, entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_nlink > 1:
                    ident = inode_of(st)
                    if ident in seen:
                        continue
                    seen.add(ident)
                total += st.st_size
                if stop_above is not None and total > stop_above:
                    return total
    return total


def directory_usage(paths: Sequence[Path]) -> int:
    """Bytes used by the regular files under ``paths``: their apparent sizes (``st_size``).

    Symbolic links are not followed (and count nothing, as do directories and special files); a file
    with several hard links under the paths counts once, by (``st_dev``, ``st_ino``); files and
    directories vanishing during the scan are skipped, and a path that is missing, not a directory or
    a symbolic link counts 0. A directory that cannot be read raises ``PermissionError``.
    """
    return tree_usage(paths)
