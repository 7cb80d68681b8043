"""Real programs a new user runs in the drive: git, sqlite3, rsync, tar, vim, gcc and make.
Each does its own kind of I/O (lock files renamed into place, hard links, fsync, WAL and
its shared-memory file, files rewritten in place, executables mapped and run, mtimes
compared) and checks its own result the way its user would (`git fsck`, `PRAGMA
integrity_check`, a second rsync with nothing to do, the program's output). The `work`
fixture uploads everything and runs fsck after each test."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from test_sync import wait_for
from treeutil import describe

TIMEOUT = 120  # no program here takes more than a few seconds


def run(*command: str, cwd: str | Path | None = None, input: str | None = None) -> str:
    """Run a program; its failure is the test's, with what it printed."""
    result = subprocess.run(command, cwd=cwd, input=input, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def git(repo: str | Path, *args: str) -> str:
    return run("git", "-C", str(repo), "-c", "user.name=Ada", "-c", "user.email=ada@example.org",
               "-c", "init.defaultBranch=main", "-c", "gc.auto=0", *args)


def source_tree(root: Path) -> Path:
    """A small project as users have them: nested folders, a big file, an empty folder,
    a symlink, a hard link, an executable, set mtimes."""
    (root / "src" / "lib").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "README").write_text("a project\n")
    (root / "src" / "main.c").write_text('int main(void) { return 0; }\n')
    (root / "src" / "lib" / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    for i in range(40):
        (root / "src" / "lib" / f"part{i:02d}.txt").write_text(f"part {i}\n" * (i + 1))
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("src/main.c", root / "main-link")
    os.link(root / "README", root / "README.hardlink")
    # made a while ago, with nanoseconds (rsync and tar leave alone a folder whose mtime is
    # in the same second as the source's, wherever they write)
    for number, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        stamp = 1_600_000_000_123_456_789 + number * 1_000_000_007
        os.utime(path, ns=(stamp, stamp), follow_symlinks=False)
    os.utime(root, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return root


def same_tree(copy: str | Path, original: str | Path) -> None:
    """Equal as a user compares copies: content, types, modes, mtimes, links (a folder's
    size is the file system's own business)."""
    def comparable(root):
        return {path: (kind, mode, None if kind == 0o040000 else size, *rest)
                for path, (kind, mode, size, *rest) in describe(str(root)).items()}
    assert comparable(copy) == comparable(original)


def test_git_commits_branches_merges_gc_and_a_local_clone_pass_git_fsck(work):
    repo = Path(work) / "repo"
    git(work, "init", "-q", str(repo))
    for i in range(30):
        (repo / f"module{i}.py").write_text(f"VALUE = {i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    git(repo, "checkout", "-qb", "feature")
    (repo / "module3.py").write_text("VALUE = 'three'\n")
    git(repo, "mv", "module4.py", "renamed.py")
    git(repo, "commit", "-qam", "feature work")
    git(repo, "checkout", "-q", "main")
    (repo / "new.txt").write_text("on main\n")
    git(repo, "add", "new.txt")
    git(repo, "commit", "-qm", "main work")
    git(repo, "merge", "-q", "--no-edit", "feature")
    git(repo, "gc", "-q", "--prune=now")  # packs the objects, deletes the loose ones
    run("git", "clone", "-q", str(repo), str(Path(work) / "clone"))  # hard links the objects

    for checkout in (repo, Path(work) / "clone"):
        git(checkout, "fsck", "--full", "--strict")
        assert git(checkout, "status", "--porcelain") == ""
        assert git(checkout, "log", "--format=%s").split("\n")[:3] == ["Merge branch 'feature'", "main work",
                                                                      "feature work"]
        assert (checkout / "module3.py").read_text() == "VALUE = 'three'\n"
        assert (checkout / "renamed.py").exists() and not (checkout / "module4.py").exists()


def test_sqlite3_in_both_journal_modes_keeps_every_committed_row_and_passes_integrity_check(work):
    for mode in ("wal", "delete"):
        db = os.path.join(work, f"{mode}.db")
        script = [f"PRAGMA journal_mode={mode};", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);"]
        script += [f"BEGIN; INSERT INTO notes(body) VALUES('note {i} ' || hex(randomblob(200))); COMMIT;"
                   for i in range(300)]
        script += ["BEGIN; UPDATE notes SET body = 'edited' WHERE id % 7 = 0; COMMIT;",
                   "BEGIN; DELETE FROM notes WHERE id > 290; ROLLBACK;"]
        run("sqlite3", db, input="\n".join(script))
        out = run("sqlite3", db, "PRAGMA integrity_check; SELECT count(*), sum(body = 'edited') FROM notes;")
        assert out.split() == ["ok", "300|42"], (mode, out)


def test_rsync_copies_a_tree_exactly_and_a_second_run_has_nothing_to_do(work, tmp_path):
    source = source_tree(tmp_path / "project")
    destination = os.path.join(work, "project")
    run("rsync", "-aH", f"{source}/", f"{destination}/")
    same_tree(destination, source)
    assert run("rsync", "-aHi", "--checksum", f"{source}/", f"{destination}/") == ""

    (source / "src" / "lib" / "part07.txt").write_text("changed\n")
    with open(source / "src" / "lib" / "data.bin", "r+b") as f:  # a page changed in a big file
        f.seek(1 << 20)
        f.write(b"x" * 4096)
    changed = run("rsync", "-aHi", "--inplace", f"{source}/", f"{destination}/").split("\n")
    assert sorted(line.split()[-1] for line in changed if line) == ["src/lib/data.bin", "src/lib/part07.txt"]
    same_tree(destination, source)


def test_tar_extracts_into_the_drive_and_archives_out_of_it_unchanged(work, tmp_path):
    source = source_tree(tmp_path / "project")
    run("tar", "--format=posix", "-cf", str(tmp_path / "in.tar"), "-C", str(source), ".")  # (ns mtimes)
    extracted = os.path.join(work, "extracted")
    os.mkdir(extracted)
    run("tar", "-xpf", str(tmp_path / "in.tar"), "-C", extracted)
    same_tree(extracted, source)

    run("tar", "--format=posix", "-cf", str(tmp_path / "out.tar"), "-C", extracted, ".")
    back = tmp_path / "back"
    back.mkdir()
    run("tar", "-xpf", str(tmp_path / "out.tar"), "-C", str(back))
    same_tree(back, source)


def test_vim_edits_and_saves_a_file_keeping_its_mode(work):
    path = os.path.join(work, "notes.txt")
    with open(path, "w") as f:
        f.write("".join(f"line {i}: old text\n" for i in range(200)))
    os.chmod(path, 0o640)
    for backupcopy in ("yes", "no"):  # rewrite in place; write a new file and rename it over
        run("vim", "-u", "NONE", "-i", "NONE", "-n", "-es", "-c", f"set backupcopy={backupcopy} writebackup",
            "-c", "%s/old/new/e", "-c", "$put ='added by vim'", "-c", "wq", path)
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0] == "line 0: new text" and lines[199] == "line 199: new text"
    assert lines[200:] == ["added by vim", "added by vim"]
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert not [name for name in os.listdir(work) if name != "notes.txt"]  # no backup or swap file left


def test_a_program_built_with_make_and_gcc_in_the_drive_runs_and_rebuilds_only_what_changed(work):
    project = Path(work) / "hello"
    project.mkdir()
    (project / "greet.c").write_text('const char *greeting(void) { return "hello"; }\n')
    (project / "main.c").write_text('#include <stdio.h>\nconst char *greeting(void);\n'
                                    'int main(void) { puts(greeting()); return 0; }\n')
    (project / "Makefile").write_text("hello: main.o greet.o\n\tgcc -o $@ $^\n%.o: %.c\n\tgcc -c -o $@ $<\n")
    run("make", "-s", cwd=project)
    assert run(str(project / "hello")) == "hello\n"  # mapped and executed from the mount
    run("make", "-q", cwd=project)  # exits 0: every target is newer than what it is made of

    time.sleep(1.1)  # a visibly newer mtime for make, whatever its clock granularity
    (project / "greet.c").write_text('const char *greeting(void) { return "hello again"; }\n')
    rebuilt = run("make", cwd=project)
    assert "greet.c" in rebuilt and "main.c" not in rebuilt
    assert run(str(project / "hello")) == "hello again\n"


def test_a_repository_committed_on_one_device_is_whole_on_another_which_commits_back(s3_volume):
    laptop, desktop = s3_volume.mount("laptop", poll_interval=0.3), s3_volume.mount("desktop", poll_interval=0.3)
    repo = Path(laptop.p("repo"))
    git(laptop.path, "init", "-q", str(repo))
    for i in range(20):
        (repo / f"file{i}.txt").write_text(f"{i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "from the laptop")
    head = git(repo, "rev-parse", "HEAD")
    laptop.sync()

    there = Path(desktop.p("repo"))
    wait_for(lambda: (there / ".git" / "refs" / "heads" / "main").exists()
             and (there / ".git" / "refs" / "heads" / "main").read_text() == head,
             what="the laptop's commit on the desktop")
    git(there, "fsck", "--full", "--strict")
    assert git(there, "status", "--porcelain") == ""  # other inode numbers: git rehashes, finds it clean
    (there / "file3.txt").write_text("three\n")
    git(there, "commit", "-qam", "from the desktop")
    desktop.sync()

    wait_for(lambda: git(repo, "log", "-1", "--format=%s") == "from the desktop\n",
             what="the desktop's commit on the laptop")
    git(repo, "fsck", "--full", "--strict")
    assert (repo / "file3.txt").read_text() == "three\n"
    laptop.fsck_clean()
    desktop.fsck_clean()


def test_a_days_work_with_git_office_saves_and_sqlite_leaves_only_what_the_user_deleted_in_the_trash(s3_volume):
    """git's lock and temporary files and the loose objects gc packs, office lock files and
    saves by rename, SQLite's rollback journals: none of it is the user's to restore, so none
    of it fills the trash (engine/scratch.py); a file the user deletes still goes there."""
    import json

    laptop = s3_volume.mount("laptop", poll_interval=0.5)
    desktop = s3_volume.mount("desktop", poll_interval=0.5)
    (Path(desktop.path) / "old-notes.txt").write_text("written on the desktop yesterday\n")
    desktop.sync()
    work = Path(laptop.path)
    wait_for(lambda: (work / "old-notes.txt").exists(), timeout=30, what="the desktop's file on the laptop")
    repo = work / "repo"
    git(work, "init", "-q", str(repo))
    for i in range(6):
        (repo / f"module{i % 3}.py").write_text(f"VALUE = {i}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"change {i}")
    git(repo, "branch", "feature")
    git(repo, "tag", "v1")
    git(repo, "gc", "-q", "--prune=now")
    # (not a checkout: git rewrites a work-tree file as unlink + create, and that unlink is
    # the file's, into the trash, though its content goes on in the new file's history)
    for version in range(3):  # LibreOffice: a lock, the new content in a temporary renamed over, no lock
        lock = work / ".~lock.report.odt#"
        lock.write_text("Ada,laptop,01.12.2026 10:00,\n")
        (work / "lu12345.tmp").write_bytes(os.urandom(20_000) + bytes([version]))
        os.rename(work / "lu12345.tmp", work / "report.odt")
        lock.unlink()
    run("sqlite3", str(work / "ledger.db"), "PRAGMA journal_mode=DELETE; CREATE TABLE t(x);"
        + "".join(f"INSERT INTO t VALUES({i});" for i in range(30)))
    for i in range(20):
        run("sqlite3", str(work / "ledger.db"), f"INSERT INTO t VALUES({i});")
    (work / "old-notes.txt").unlink()  # what the user deletes
    laptop.sync()
    listed = json.loads(s3_volume.cli.run("trash", "list", str(laptop.path), "--json").stdout)
    assert [item["path"] for item in listed] == ["/old-notes.txt"], [item["path"] for item in listed]
    assert git(repo, "fsck", "--full", "--strict") is not None
    assert git(repo, "status", "--porcelain") == ""
