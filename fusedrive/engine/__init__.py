"""The sync engine of one volume on one device: replica, journal, commits and rebase, staging, uploads,
reads, blocks, cache, checkpoints, history. No FUSE in it: the front ends (fuse/, a mirror) sit on top."""
