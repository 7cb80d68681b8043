"""Journal operations: every kind, its fields and their types, and the format version that
introduced it — the one place entries read from the store are checked (docs/format.md
is the prose of this table; tests/test_format.py keeps the two equal).

An entry is checked whole before any of it is applied: an operation of a kind this build
does not know (a newer fusedrive wrote it) is `UnknownOperation` — the device stops
committing and says "upgrade", never its mount; a known kind with a missing or mistyped
field is an `IntegrityError` (the entry passed its tag, so a build wrote it wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import IntegrityError, UnknownOperation
from ..store.volume import FORMAT_VERSION

Int, Str, List, Bool = int, str, list, bool


@dataclass(frozen=True)
class OpKind:
    required: dict[str, type]
    optional: dict[str, type] = field(default_factory=dict)
    since: int = 1  # the format version that introduced it


# Any op may carry `conflict_of` (Str: the name it lost to a conflict) and `t` (Int, ns);
# `t` is required where the tree records a time.
COMMON = {"conflict_of": Str, "t": Int}
CREATE = {"fid": Str, "parent": Str, "name": Str, "uid": Int, "gid": Int, "t": Int}
OPS: dict[str, OpKind] = {
    "mkroot": OpKind({"mode": Int, "uid": Int, "gid": Int, "t": Int}),
    "mknod": OpKind({**CREATE, "mode": Int}, {"rdev": Int, "scratch": Bool}),
    "symlink": OpKind({**CREATE, "target": Str}),
    "link": OpKind({"fid": Str, "parent": Str, "name": Str, "t": Int}),
    "unlink": OpKind({"parent": Str, "name": Str, "t": Int}, {"fid": Str, "version": Int, "scratch": Bool}),
    "rename": OpKind({"parent": Str, "name": Str, "newparent": Str, "newname": Str, "t": Int},
                     {"fid": Str, "exchange": Bool, "replaces": List, "scratch": Bool}),
    "setattr": OpKind({"fid": Str, "t": Int}, {"mode": Int, "uid": Int, "gid": Int, "atime_ns": Int,
                                               "mtime_ns": Int}),
    "update": OpKind({"fid": Str, "manifest": List, "size": Int, "mtime_ns": Int, "t": Int},
                     {"base": Int, "device": Str, "trash": Bool, "by": Str}),
    "setxattr": OpKind({"fid": Str, "name": Str, "value": Str, "t": Int}),
    "rmxattr": OpKind({"fid": Str, "name": Str, "t": Int}),
    "prune": OpKind({"fid": Str, "versions": List}),
    "purge": OpKind({"fids": List}),
    "archive": OpKind({"blocks": List, "storage_class": Str}),
    "thaw": OpKind({"blocks": List}),
    # the membership log (membership.py): a role given or taken away ("removed"), a device revoked
    "member": OpKind({"public": Str, "name": Str, "role": Str, "t": Int}, since=5),
    "revoke": OpKind({"key": Str, "t": Int}, since=5),
    "epoch": OpKind({"epoch": Int, "check": Str, "t": Int}, since=5),
}


def make(kind: str, **fields) -> dict:
    """A journal op of `kind` with `fields`, checked against OPS: what records ops builds them
    with, so a malformed op is a TypeError where it is made, never an entry every device refuses."""
    op = {"op": kind, **{name: value for name, value in fields.items() if value is not None}}
    problem = _problem(op)
    if problem is not None:
        raise TypeError(f"A {kind!r} operation {problem}.")
    return op


def check_recorded(op: dict) -> None:
    """An op about to be queued for the journal (however it was built): raises TypeError if a
    reader would refuse it."""
    problem = _problem(op)
    if problem is not None:
        raise TypeError(f"Refusing to queue a malformed {op.get('op')!r} operation: it {problem}.")


def _problem(op: dict, unknown_fields: bool = True) -> str | None:
    """What is wrong with an op (None: nothing). `unknown_fields`: fields no reader knows
    are wrong too — in what this build makes; a reader ignores them (a newer build's)."""
    kind = OPS.get(op.get("op"))
    if kind is None:
        return "is of no kind this build knows"
    for name, kind_type in kind.required.items():
        if not isinstance(op.get(name), kind_type) or isinstance(op.get(name), bool) and kind_type is Int:
            return f"lacks {name!r} or it is not a {kind_type.__name__}"
    for name, kind_type in {**COMMON, **kind.optional}.items():
        if name in op and op[name] is not None and not isinstance(op[name], kind_type):
            return f"has {name!r} that is not a {kind_type.__name__}"
    unknown = set(op) - {"op"} - set(kind.required) - set(kind.optional) - set(COMMON) if unknown_fields else ()
    if unknown:
        return f"has fields no reader knows ({', '.join(sorted(unknown))})"
    return None


def check_entry(seq: int, ops: object, entry_format: int) -> list[dict]:
    """The entry's operations, each checked against OPS; raises before anything is applied."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise IntegrityError(f"Journal entry {seq} is malformed: its operations are not a list of objects.")
    for op in ops:
        if op.get("op") not in OPS:
            newer = f" (format {entry_format}; this fusedrive reads format {FORMAT_VERSION})" \
                if entry_format > FORMAT_VERSION else ""
            raise UnknownOperation(
                f"This volume was changed by a newer fusedrive{newer}: journal entry {seq} holds an operation "
                f"this version cannot apply ({op.get('op')!r}). Upgrade fusedrive on this device; changes made "
                "here stay queued until then.")
        problem = _problem(op, unknown_fields=False)
        if problem is not None:
            raise IntegrityError(f"Journal entry {seq} is malformed: a {op['op']!r} operation {problem}.")
    return ops
