"""`mount.fuse.fusedrive`: what mount(8) runs for `mount -t fuse.fusedrive VOLUME DIR -o ...`
and for an /etc/fstab line of type fuse.fusedrive. It takes mount(8)'s helper arguments
(`SPEC DIR [-sfnv] [-o OPTIONS]`) and runs `fusedrive mount SPEC DIR -o OPTIONS`, which
mounts in the background and returns once the drive is mounted."""

from __future__ import annotations

import sys

from .cli import main as fusedrive


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    positional, options, items = [], [], iter(args)
    fake = False
    for arg in items:
        if arg == "-o":
            options.append(next(items, ""))
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg.startswith("-") and set(arg[1:]) <= set("sfnv"):
            fake = fake or "f" in arg  # -f: pretend (mount --fake); -s, -n, -v mean nothing here
        else:
            positional.append(arg)
    if len(positional) != 2:
        print("usage: mount.fuse.fusedrive VOLUME MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 64
    if fake:
        return 0
    return fusedrive(["mount", *positional, *(arg for group in options for arg in ("-o", group))])


if __name__ == "__main__":
    sys.exit(main())
