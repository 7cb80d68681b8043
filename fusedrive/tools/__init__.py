"""Offline tools that read a volume through the engine: fsck, du and gc."""
