"""fusedrive: a cloud drive that mounts an S3 (or local) volume as a folder."""

__version__ = "0.1.0"
