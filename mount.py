"""`python mount.py [VOLUME] MOUNTPOINT [options]` is `fusedrive mount ...`."""

import sys

from fusedrive.cli import main

if __name__ == "__main__":
    sys.exit(main(["mount", *sys.argv[1:]]))
