"""The mirror front end: a real folder on the local disk kept equal to the volume.

Where the FUSE front end (fuse/) answers the kernel's requests on the engine, a mirror
keeps whole files in a folder and moves changes both ways: `watching.py` hears the
folder's changes (watchdog), the engine's `Changes` names the volume's, and `Mirror`
(mirror.py) reconciles each changed path by the rules of `rules.py`, using what the
two sides last agreed on (`synced.py`) and the folder's side (`folder.py`).
`running.py` runs it as a process, like a mount.
"""
