"""The `mosaic` command line (`mosaic ...` or `python -m mosaicdb ...`): thin click wrappers over
the mosaicdb library. Installed as `mosaicdb_cli`, a name no other package claims."""
