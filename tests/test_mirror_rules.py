"""The mirror's rules and its memory, in-process: for every combination of what the folder
holds, what the volume holds and what both last agreed on, the side that changed wins,
nothing either side changed is ever overwritten without a conflicted copy, and the
agreed state survives renames (property-based: hypothesis draws the combinations)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusedrive.mirror.folder import IgnoreRules, LocalEntry, look, swap_in
from fusedrive.mirror.rules import Action, Merge, RemoteEntry, decide, local_unchanged, merge, remote_unchanged
from fusedrive.mirror.synced import Synced, SyncedState

pytestmark = pytest.mark.inprocess

kinds = st.sampled_from(["file", "dir", "link"])
small = st.integers(min_value=0, max_value=3)


@st.composite
def locals_(draw) -> LocalEntry | None:
    if draw(st.booleans()):
        return None
    kind = draw(kinds)
    return LocalEntry(kind, draw(small) if kind == "file" else 0, draw(small) if kind == "file" else 0, draw(small),
                      draw(st.sampled_from([0o644, 0o600])) if kind != "link" else 0o777,
                      draw(st.sampled_from([b"a", b"b"])) if kind == "link" else None)


@st.composite
def remotes(draw) -> RemoteEntry | None:
    if draw(st.booleans()):
        return None
    kind = draw(kinds)
    return RemoteEntry(kind, draw(st.sampled_from(["f1", "f2"])), draw(small) if kind == "file" else 0,
                       draw(small) if kind == "file" else 0,
                       draw(st.sampled_from([0o644, 0o600])) if kind != "link" else 0o777,
                       draw(st.sampled_from([b"a", b"b"])) if kind == "link" else None)


@st.composite
def agreed(draw) -> Synced | None:
    """What both sides held: a local entry with the volume's file id."""
    local = draw(locals_())
    return None if local is None else Synced.of(local, draw(st.sampled_from(["f1", "f2"])))


@settings(max_examples=500, deadline=None)
@given(locals_(), agreed(), remotes())
def test_the_side_that_changed_wins_and_a_double_change_is_merged(local, synced, remote):
    action = decide(local, synced, remote)
    local_same, remote_same = local_unchanged(local, synced), remote_unchanged(remote, synced)
    if local_same and remote_same:
        assert action is Action.NOTHING
    elif local_same:
        assert action is Action.PULL, "only the volume changed: it is pulled"
    elif remote_same:
        assert action is Action.PUSH, "only the folder changed: it is pushed"
    else:
        assert action is Action.MERGE, "both changed: never one side over the other unseen"


@settings(max_examples=500, deadline=None)
@given(locals_(), remotes(), st.booleans())
def test_a_merge_never_drops_a_side_that_has_something(local, remote, same_content):
    outcome = merge(local, remote, same_content)
    if local is not None and remote is not None:
        empty = local.kind == remote.kind == "file" and not same_content and 0 in (local.size, remote.size)
        different = local.kind != remote.kind or (local.kind == "file" and not same_content and not empty) or \
            (local.kind == "link" and local.target != remote.target)
        assert (outcome is Merge.CONFLICT) == different, "two different things: both kept, one as a copy"
        if empty:  # an empty file holds nothing to lose: the other side's content is the file
            assert outcome is (Merge.PUSH if remote.size == 0 else Merge.PULL)
    elif local is not None:
        assert outcome is Merge.PUSH, "a change beats a delete: the folder's comes back to the volume"
    elif remote is not None:
        assert outcome is Merge.PULL, "a change beats a delete: the volume's comes back to the folder"
    else:
        assert outcome is Merge.AGREE


def test_the_volumes_own_uploads_do_not_count_as_a_change():
    """This device's upload gives the file a new version, not new size or mtime: a file
    whose size and mtime are what was agreed is unchanged."""
    synced = Synced.of(LocalEntry("file", 10, 1_000, 7, 0o644), "f1")
    assert remote_unchanged(RemoteEntry("file", "f1", 10, 1_000, 0o644), synced)
    assert not remote_unchanged(RemoteEntry("file", "f1", 10, 1_001, 0o644), synced)
    assert not remote_unchanged(RemoteEntry("file", "f2", 10, 1_000, 0o644), synced), "another file under the name"


def test_a_local_file_replaced_under_the_same_size_and_mtime_is_a_change():
    """An editor's save by rename gives a new inode: changed, whatever its size and mtime."""
    synced = Synced.of(LocalEntry("file", 10, 1_000, 7, 0o644), "f1")
    assert not local_unchanged(LocalEntry("file", 10, 1_000, 8, 0o644), synced)


def test_the_agreed_state_follows_a_folder_rename_and_survives_a_restart(tmp_path):
    path = str(tmp_path / "mirror.sqlite3")
    state = SyncedState(path)
    state.start_over_for("/home/me/Drive")
    state.put(b"docs", Synced.of(LocalEntry("dir", 0, 0, 1, 0o755), "d"))
    state.put(b"docs/a.txt", Synced.of(LocalEntry("file", 3, 5, 2, 0o644), "a"))
    state.put(b"docs/sub/b.txt", Synced.of(LocalEntry("file", 4, 6, 3, 0o600), "b"))
    state.put(b"docs2", Synced.of(LocalEntry("file", 1, 1, 4, 0o644), "c"))  # a name that merely starts alike
    state.move(b"docs", b"papers")
    state.close()
    state = SyncedState(path)
    state.start_over_for("/home/me/Drive")  # the same folder: nothing forgotten
    assert state.get(b"docs/a.txt") is None and state.get(b"papers/a.txt").fid == "a"
    assert state.get(b"papers/sub/b.txt") == Synced.of(LocalEntry("file", 4, 6, 3, 0o600), "b")
    assert state.get(b"docs2").fid == "c"
    assert sorted(state.children(b"papers")) == [b"a.txt"]
    assert state.paths_of("b") == [b"papers/sub/b.txt"]
    state.forget(b"papers")
    assert state.count() == 1
    state.start_over_for("/somewhere/else")  # another folder: it merges as a first sync
    assert state.count() == 0
    state.close()


def test_ignore_rules_from_the_defaults_and_the_folder(tmp_path):
    (tmp_path / ".fusedriveignore").write_text("*.log\nbuild/\n!keep.log\n")
    rules = IgnoreRules(bytes(tmp_path))
    assert rules.ignored(b"debug.log") and not rules.ignored(b"keep.log")
    assert rules.ignored(b"build", is_dir=True) and rules.ignored(b"src/build/out.o")
    assert rules.ignored(b".notes.txt.swp") and rules.ignored(b"draft.txt~") and rules.ignored(b".~lock.a.odt#")
    assert rules.ignored(b"docs/.fusedrive-1234.part")
    assert not rules.ignored(b"notes.txt") and not rules.ignored(b".fusedriveignore")
    assert not rules.ignored(b"caf\xe9.txt"), "a name that is not UTF-8 is still a name"


def test_a_download_never_replaces_a_save_made_after_the_mirror_looked(tmp_path):
    """The mirror looks at a path, fetches the volume's version, then puts it in place: a
    save landing between the look and the put must stay (the path is merged again
    later), whether the path held a file or nothing."""
    full = bytes(tmp_path / "notes.txt")

    def download(data: bytes) -> bytes:
        temporary = bytes(tmp_path / ".fusedrive-notes.part")
        with open(temporary, "wb") as f:
            f.write(data)
        return temporary

    with open(full, "wb") as f:
        f.write(b"agreed")
    looked = look(bytes(tmp_path), b"notes.txt")
    assert swap_in(download(b"from the volume"), full, looked)
    assert open(full, "rb").read() == b"from the volume"

    looked = look(bytes(tmp_path), b"notes.txt")
    with open(full, "r+b") as f:  # the user's save, after the look, in place
        f.write(b"the user's save")
    assert not swap_in(download(b"newer from the volume"), full, looked)
    assert open(full, "rb").read() == b"the user's save"

    looked = look(bytes(tmp_path), b"notes.txt")
    with open(full, "ab") as appending:  # opened before the swap, written after it
        assert not swap_in(download(b"newer still from the volume"), full, looked)
        appending.write(b", appended")
    assert open(full, "rb").read() == b"the user's save, appended"

    os.unlink(full)
    with open(full, "wb") as f:  # nothing there when the mirror looked; a new file since
        f.write(b"a new save")
    assert not swap_in(download(b"from the volume"), full, None)
    assert open(full, "rb").read() == b"a new save"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no download left behind
