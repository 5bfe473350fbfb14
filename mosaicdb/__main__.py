"""`python -m mosaicdb ...` runs the `mosaic` command line.

This is the program's entry point, not part of the library: nothing in `mosaicdb` imports
it, so the library itself still never imports click (tests/test_architecture.py).
"""
from mosaicdb_cli.entry import main

if __name__ == "__main__":
    main()
