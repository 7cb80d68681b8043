"""User-facing errors: one clear sentence each, and an exit code scripts can trust."""


class FusedriveError(Exception):
    """An error the CLI reports as one sentence (no traceback) with `exit_code`."""

    exit_code = 2


class UsageError(FusedriveError):
    """The command line or an argument is wrong."""

    exit_code = 64


class VolumeNotFound(FusedriveError):
    exit_code = 3


class VolumeExists(FusedriveError):
    exit_code = 4


class WrongPassphrase(FusedriveError):
    exit_code = 5


class StoreUnreachable(FusedriveError):
    """The object store did not answer (or the volume's disk cannot be written now)."""

    exit_code = 6


class StoreRefused(StoreUnreachable):
    """The store answers but refuses us: credentials refused, the bucket missing. Not
    worth retrying every few seconds: it needs the user."""

    exit_code = 16


class StoreUnsupported(FusedriveError):
    """The store does not honour put-if-absent, so the journal could fork."""

    exit_code = 7


class Archived(FusedriveError):
    """A block moved to an archive storage class: `fusedrive thaw` brings it back."""

    exit_code = 10


class IntegrityError(FusedriveError):
    """Something read from the store failed its authentication tag or hash."""

    exit_code = 8


class KeyNotGiven(IntegrityError):
    """An object sealed under a key epoch this device was never given (its person was
    removed from the volume since; a passphrase opens only the volume's first key)."""

    exit_code = 5


class BlockMissing(IntegrityError):
    """A block the journal names is not in the store (lost when the store went back in time:
    a device that has it puts it back at its next pull; or never uploaded). Never wrong bytes."""


class DeviceStuck(FusedriveError):
    """This device cannot apply the journal or commit its queue for a reason that is neither
    the store nor a newer format (a state this build cannot handle: a bug). It goes on
    serving what it has; its changes stay queued; the user must hear of it."""

    exit_code = 17


class LocalError(FusedriveError):
    """This machine refused a file operation: a read-only disk, a permission, a path that is
    not a directory."""

    exit_code = 14


class NewerFormat(FusedriveError):
    """The volume (or an entry in it) was written by a newer fusedrive than this one."""

    exit_code = 15


class UnknownOperation(NewerFormat):
    """A journal entry from a newer build: this device stops committing, never its mount."""


class MountError(FusedriveError):
    exit_code = 9


class FuseUnavailable(MountError):
    """/dev/fuse is missing: this system cannot mount FUSE file systems at all."""

    exit_code = 11


class CacheDirError(MountError):
    """The cache dir cannot serve this mount: full disk, no access, another volume's or in use."""

    exit_code = 12


def first_clear_error(group: BaseExceptionGroup) -> BaseException:
    """trio nurseries wrap errors in groups; the user should see our one-sentence error."""
    matched, _rest = group.split(FusedriveError)
    if matched is None:
        return group
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched
