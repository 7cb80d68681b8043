"""The FUSE front end: kernel requests on the engine, the history tree, mounting."""
