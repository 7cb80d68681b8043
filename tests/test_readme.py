"""The README's first command, exactly as written, from a fresh HOME: a new user's drive
is set up and mounted at ~/FuseDrive (no cloud account, no passphrase), then unmounted."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from test_posix import read, write

REPO = Path(__file__).resolve().parent.parent


def first_command() -> str:
    """The command under "# 1." in the README's "Two commands" block."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```sh\n# 1\.[^\n]*\n([^\n]+)\n", text)
    assert match, "the README's first command is not where a new user looks for it"
    return match.group(1)


def test_the_readmes_first_command_mounts_a_drive_from_a_fresh_home(tmp_path):
    home = tmp_path / "fresh-home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("XDG_", "FUSEDRIVE_", "AWS_"))}
    # a deep XDG_RUNTIME_DIR (pytest's tmp_path under a worker): the control socket must still fit
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    command = first_command()
    assert command == "scripts/setup.sh && .venv/bin/fusedrive mount ~/FuseDrive"
    drive = home / "FuseDrive"
    try:
        result = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr
        assert os.path.ismount(drive)
        write(str(drive / "hello.txt"), b"my first file")
        assert read(str(drive / "hello.txt")) == b"my first file"
        status = subprocess.run([str(REPO / ".venv/bin/fusedrive"), "status"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert status.returncode in (0, 1) and "FuseDrive" in status.stdout
        fusedrive = str(REPO / ".venv/bin/fusedrive")
        default_url = (home / ".local/share/fusedrive/default-volume").as_uri()  # as status names it
        for args in (["du"], ["du", str(drive)], ["config"], ["gc", "--dry-run"],
                     ["history", "hello.txt", "--volume", "default"], ["du", default_url]):
            # the default drive is managed without knowing its hidden key file
            managed = subprocess.run([fusedrive, *args], env=env, capture_output=True, text=True, timeout=120,
                                     stdin=subprocess.DEVNULL)
            assert managed.returncode == 0, f"fusedrive {' '.join(args)}: {managed.stderr}"
    finally:
        subprocess.run([str(REPO / ".venv/bin/fusedrive"), "umount", str(drive)], env=env, capture_output=True,
                       timeout=120)
        if os.path.ismount(drive):
            subprocess.run(["fusermount3", "-u", "-z", str(drive)], capture_output=True, timeout=30)
    assert not os.path.ismount(drive)
    fsck = subprocess.run([str(REPO / ".venv/bin/fusedrive"), "fsck"], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    key = home / ".config/fusedrive/default.key"
    assert key.exists() and (key.stat().st_mode & 0o077) == 0


def test_the_tools_the_readme_shows_are_installed_by_setup():
    """What a reader copies from the README runs: setup installs the programs it shows
    beside fusedrive (getfattr, from the attr package)."""
    import shutil

    text = (REPO / "README.md").read_text()
    shown = set(re.findall(r"^\$ (\w[\w-]*) ", text, flags=re.MULTILINE)) - {"fusedrive", "cd", "ls", "cat", "echo"}
    assert "getfattr" in shown
    assert not [tool for tool in sorted(shown) if shutil.which(tool) is None]
