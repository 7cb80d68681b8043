"""How a mount presents itself to the machine: who may enter it, whether it is writable,
and whose files appear to be whose. The conventions of rclone mount and JuiceFS users
(`--allow-other`, `--read-only`, `--uid/--gid/--umask`, and `-o a,b=c` as in /etc/fstab)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

# What mount(8), fstab and systemd pass along that means nothing to the drive itself.
IGNORED = {"defaults", "rw", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev", "dev", "nodev",
           "suid", "nosuid", "exec", "noexec", "async", "atime", "noatime", "relatime"}
# -o NAME=VALUE → the `fusedrive mount` option it stands for.
VALUED = {"key_file": "--key-file", "cache_dir": "--cache-dir", "cache_size": "--cache-size",
          "device_name": "--device-name", "poll_interval": "--poll-interval", "hub": "--hub",
          "io_timeout": "--io-timeout", "endpoint_url": "--endpoint-url", "log_file": "--log-file",
          "uid": "--uid", "gid": "--gid", "umask": "--umask", "metrics": "--metrics"}
FLAGS = {"allow_other": "--allow-other", "ro": "--read-only", "read_only": "--read-only", "notify": "--notify"}


@dataclass(frozen=True)
class Presentation:
    allow_other: bool = False
    read_only: bool = False
    uid: int | None = None  # every file appears owned by this user (default: as stored)
    gid: int | None = None
    umask: int | None = None  # permission bits taken away from every file's mode

    def fuse_options(self) -> set[str]:
        return ({"allow_other"} if self.allow_other else set()) | ({"ro"} if self.read_only else set())

    def mode(self, mode: int) -> int:
        return mode if self.umask is None else mode & ~self.umask

    def as_argv(self) -> list[str]:
        argv = ["--allow-other"] * self.allow_other + ["--read-only"] * self.read_only
        for flag, value in (("--uid", self.uid), ("--gid", self.gid)):
            if value is not None:
                argv += [flag, str(value)]
        if self.umask is not None:
            argv += ["--umask", f"{self.umask:03o}"]
        return argv


def parse_umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise UsageError(f"A umask is octal digits such as 022, not {text!r}.") from None
    if not 0 <= value <= 0o777:
        raise UsageError(f"A umask is between 000 and 777, not {text!r}.")
    return value


def expand_o_options(groups: list[str]) -> list[str]:
    """`-o allow_other,uid=1000,key_file=/k` → the long options they stand for."""
    argv: list[str] = []
    for group in groups:
        for item in filter(None, (part.strip() for part in group.split(","))):
            name, has_value, value = item.partition("=")
            if name in FLAGS and not has_value:
                argv.append(FLAGS[name])
            elif name in VALUED and has_value:
                argv += [VALUED[name], value]
            elif name in IGNORED or name.startswith("x-"):
                continue
            else:
                raise UsageError(f"Unknown mount option {item!r} (fusedrive mount --help lists them).")
    return argv
