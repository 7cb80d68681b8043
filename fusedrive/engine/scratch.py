"""Scratch files: what programs make and throw away — lock and owner files, editors' swap
files, SQLite's journals beside their database, a repository's internals (git's locks,
temporaries and the loose objects gc packs).

They sync like any file (a program on another device may rely on a lock), but deleting one
puts nothing in the trash and lets its versions go (the `unlink` op says `scratch`, decided
on the device that deletes it, so every device applies the same), and a clash on a scratch
name makes no conflicted copy: the later save or lock simply takes the name (rebase.py).
The mirror never syncs these names at all (mirror/folder.py adds its own temp files and
desktop litter). One list for both front ends, documented in the README.

Not scratch: a file that merely lived briefly. Telling a temporary from a document the user
made and deleted a moment later is guesswork, and a guess that is wrong loses a save (and
the content another device's rename or save would bring back): such files go to the trash.
"""

from __future__ import annotations

import fnmatch

from .replica import Replica

# Matched against a file's own name (shell patterns, case-sensitive).
SCRATCH_NAMES = [
    ".~lock.*#",  # LibreOffice
    "~$*",  # Microsoft Office owner files
    ".*.swp", ".*.swo", ".*.swx", "4913",  # vim (4913: its test that a folder is writable)
    ".#*", "#*#",  # emacs locks and autosaves
    ".goutputstream-*",  # GTK's save-by-rename temporaries
]
DATABASE_COMPANIONS = [b"-journal", b"-wal", b"-shm"]  # beside their SQLite database
SCRATCH_FOLDERS = [b".git", b".hg", b".svn"]  # a repository's internals: locks, temporaries, packed objects

_PATTERNS = [pattern.encode() for pattern in SCRATCH_NAMES]


def is_scratch_name(name: bytes) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _PATTERNS)


def in_scratch_folder(replica: Replica, parent_ino: int) -> bool:
    """Whether a folder is, or lies inside, a repository's internals."""
    ino: int | None = parent_ino
    seen = set()
    while ino is not None and ino not in seen:
        seen.add(ino)
        place = replica.place_of(ino)
        if place is None:
            return False
        if place[1] in SCRATCH_FOLDERS:
            return True
        ino = place[0]
    return False


def is_database_companion(replica: Replica, parent_ino: int, name: bytes) -> bool:
    """SQLite's rollback journal, write-ahead log or shared-memory index beside its database
    ("notes.db-journal" while "notes.db" is there): deleted once its content is in the database."""
    for suffix in DATABASE_COMPANIONS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return replica.lookup(parent_ino, name[:-len(suffix)]) is not None
    return False


def is_scratch(replica: Replica, parent_ino: int, name: bytes) -> bool:
    """Whether `name` in folder `parent_ino` is a scratch file."""
    return (is_scratch_name(name) or is_database_companion(replica, parent_ino, name)
            or in_scratch_folder(replica, parent_ino))
