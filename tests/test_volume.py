"""What a user of a single device checks: the tree comes back anywhere, the store
learns nothing, identical data is stored once, sparse files stay sparse."""

from __future__ import annotations

import os
import shutil


from treeutil import describe

MiB = 1024 * 1024


def make_tree(root: str) -> dict[str, bytes]:
    """Files of 0 B, 1 B, 5 MiB and 200 MiB random, a symlink, a hard link, nested dirs, xattrs, modes."""
    contents = {
        "empty": b"",
        "one": b"1",
        "docs/five.bin": os.urandom(5 * MiB),
        "docs/deep/er/nested.txt": b"nested\n" * 1000,
    }
    os.makedirs(os.path.join(root, "docs/deep/er"))
    os.mkdir(os.path.join(root, "emptydir"), 0o700)
    for rel, data in contents.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MiB))
    os.symlink("docs/five.bin", os.path.join(root, "link-to-five"))
    os.link(os.path.join(root, "one"), os.path.join(root, "docs/hardlink-to-one"))
    os.chmod(os.path.join(root, "docs/deep/er/nested.txt"), 0o640)
    os.chmod(os.path.join(root, "one"), 0o755)
    os.setxattr(os.path.join(root, "docs/five.bin"), "user.origin", b"camera")
    os.utime(os.path.join(root, "empty"), ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    return contents


def test_tree_comes_back_on_a_fresh_device(volume):
    first = volume.mount("laptop")
    make_tree(first.path)
    expected = describe(first.path)
    first.umount()
    shutil.rmtree(first.cache_dir)

    second = volume.mount("new-machine")
    assert describe(second.path) == expected


def test_store_sees_no_names_and_no_content(volume):
    mount = volume.mount()
    secret_names = ["tax-return-2026.pdf", "diary-entries"]
    secret = os.urandom(3 * MiB)
    text = b"The quick brown fox keeps a very secret diary. " * 2000
    os.mkdir(mount.p(secret_names[1]))
    with open(mount.p(secret_names[0]), "wb") as f:
        f.write(secret)
    with open(mount.p(secret_names[1], "today.txt"), "wb") as f:
        f.write(text)
    os.setxattr(mount.p(secret_names[0]), "user.label", b"highly-confidential-label")
    mount.sync()

    stored = b"".join(volume.read_object(key) for key, _ in volume.list_objects())
    for name in secret_names + ["today.txt", "highly-confidential-label"]:
        assert name.encode() not in stored
    for data in (secret, text):
        for offset in range(0, len(data) - 32, 4099):
            assert data[offset:offset + 32] not in stored


def test_wrong_passphrase_is_one_clear_sentence(volume, tmp_path):
    result = volume.cli.run("mount", volume.url, str(tmp_path), passphrase="not the passphrase", check=False)
    assert result.returncode == 5
    assert result.stderr.strip() == f"fusedrive: Wrong passphrase for the volume at {volume.url}."
    assert "Traceback" not in result.stderr


def test_identical_data_is_stored_once(volume):
    mount = volume.mount()
    data = os.urandom(50 * MiB)
    before = volume.stored_bytes()
    for name in ("a", "b", "c"):
        with open(mount.p(name), "wb") as f:
            f.write(data)
    mount.sync()
    assert volume.stored_bytes() - before < 55 * MiB

    before = volume.stored_bytes()
    with open(mount.p("zeros"), "wb") as f:
        for _ in range(100):
            f.write(bytes(MiB))
    mount.sync()
    assert volume.stored_bytes() - before < 1 * MiB
    assert os.path.getsize(mount.p("zeros")) == 100 * MiB


def test_sparse_10_gib_file(volume):
    mount = volume.mount()
    size = 10 * 1024 * MiB
    before = volume.stored_bytes()
    with open(mount.p("sparse"), "wb") as f:
        f.seek(size - 5)
        f.write(b"tail!")
    mount.sync()
    assert volume.stored_bytes() - before < MiB
    with open(mount.p("sparse"), "rb") as f:
        f.seek(size // 2)
        assert f.read(MiB) == bytes(MiB)
        f.seek(size - 5)
        assert f.read() == b"tail!"
    assert os.path.getsize(mount.p("sparse")) == size
    # a write in the middle of the committed sparse file keeps it sparse
    with open(mount.p("sparse"), "r+b") as f:
        f.seek(size // 3)
        f.write(b"middle")
    mount.sync()
    assert volume.stored_bytes() - before < 2 * MiB
    with open(mount.p("sparse"), "rb") as f:
        f.seek(size // 3 - 2)
        assert f.read(10) == b"\0\0middle\0\0"
