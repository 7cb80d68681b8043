"""The package's layers: imports only go downward, and only the FUSE front end speaks FUSE.

    mounthelper.py              mount -t fuse.fusedrive, on the commands
    cli.py                      the commands
    fuse/, mirror/              the front ends: the FUSE mount, a folder kept in sync (neither imports the other)
    services/, tools/           beside a mount: control socket, hub, metrics, sharing; fsck, du, gc
    engine/                     one volume on one device, no FUSE
    store/                      S3, file://, sealing, the volume header
    errors, report, signals, crashpoints   shared by all
"""

import ast
from pathlib import Path

import pytest

import fusedrive

pytestmark = pytest.mark.inprocess

PACKAGE = Path(fusedrive.__file__).parent
LAYERS = {"errors": 0, "report": 0, "signals": 0, "crashpoints": 0, "__init__": 0, "store": 1, "engine": 2,
          "services": 3, "tools": 3, "fuse": 4, "mirror": 4, "cli": 5, "mounthelper": 6, "testing": 7}
FUSE_ONLY = {"pyfuse3"}


def _unit(module: str) -> str:
    """fusedrive.engine.replica → engine; fusedrive.errors → errors."""
    parts = module.split(".")
    if len(parts) < 2 or not ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists()):
        return "__init__"  # the package itself, or a name it defines (__version__)
    return parts[1]


def _imports(path: Path) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    module = "fusedrive." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module
            if target == "fusedrive" or (node.level and not node.module and target.count(".") <= 1):
                found += [f"{target}.{alias.name}" for alias in node.names]
            else:
                found.append(target)
    return found


def test_every_module_belongs_to_a_layer():
    units = {_unit("fusedrive." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
             for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"modules outside the layers: {units - set(LAYERS)}"


def test_imports_only_go_downward():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        here = _unit("fusedrive." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in _imports(path):
            if not target.startswith("fusedrive."):
                continue
            there = _unit(target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, "imports that do not go downward:\n" + "\n".join(sorted(wrong))


def test_only_the_fuse_front_end_speaks_fuse():
    wrong = [f"{path.relative_to(PACKAGE)} imports {target}"
             for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "fuse"
             for target in _imports(path) if target.split(".")[0] in FUSE_ONLY]
    assert not wrong, wrong


def test_no_engine_module_is_a_second_drive_py():
    """The engine split by responsibility: no module of it over ~500 lines."""
    long = {str(p.relative_to(PACKAGE)): n for p in (PACKAGE / "engine").glob("*.py")
            if (n := len(p.read_text().splitlines())) > 520}
    assert not long, long


def test_a_mirror_runs_where_fuse_is_missing():
    """`fusedrive mirror` is for machines without FUSE: neither the command line nor the
    mirror loads pyfuse3 (whose import needs libfuse3)."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, fusedrive.cli, fusedrive.mirror.running; "
                             "print(sorted(m for m in sys.modules if m.split('.')[0] in {'pyfuse3'}))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"the mirror's path loads FUSE modules: {loaded}"


# The engine's parts behind Drive: front ends use Drive, its `tree` (queries), `namespace`,
# `pins` and `events`, and modules' pure helpers (history's listings, manifest's pieces, tree's
# names, namespace's name rules, staging's data_spans of a local file, cache's free_and_reserve).
ENGINE_PARTS = ("replica", "files", "staging", "changes", "committer", "uploads", "reader", "writer", "follower",
                "journal", "blocks", "cache", "replication")
FRONT_ENDS = ("fuse", "mirror", "services")


def test_front_ends_call_the_drive_never_the_parts_behind_it():
    import re

    reaching = re.compile(r"\bdrive\.(" + "|".join(ENGINE_PARTS) + r")\b")
    internal = {f"fusedrive.engine.{part}" for part in ("replica", "localfiles", "changes", "committer", "uploads",
                                                         "uploader", "reads", "writes", "follower", "journal",
                                                         "blocks", "rebase", "applying", "replication", "forks",
                                                         "kept")}
    wrong = []
    for unit in FRONT_ENDS:
        for path in (PACKAGE / unit).rglob("*.py"):
            text = path.read_text()
            wrong += [f"{path.relative_to(PACKAGE)}: {m.group(0)}" for m in reaching.finditer(text)]
            wrong += [f"{path.relative_to(PACKAGE)} imports {target}" for target in _imports(path)
                      if target in internal or any(target.startswith(f"{name}.") for name in internal)]
    assert not wrong, "front ends reaching behind Drive:\n" + "\n".join(wrong)


def test_the_drive_wires_no_part_after_building_it():
    """Drive.__init__ gives each part what it asks of others when it builds it (the committer
    its `tell` for events, the replica its hooks): no `self.part.attr = …` after — a callback
    set after construction is one a reader of the part cannot see."""
    tree = ast.parse((PACKAGE / "engine" / "drive.py").read_text())
    init = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    wired = [ast.unparse(target) for node in ast.walk(init) if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Attribute)
             and isinstance(target.value, ast.Attribute) and isinstance(target.value.value, ast.Name)
             and target.value.value.id == "self"]
    assert not wired, wired
