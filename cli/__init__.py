"""The `mosaic` command line: thin click wrappers over the mosaicdb library."""
