"""Autoencoder tiles ("automosaic"): a small convolutional autoencoder trained on a pool's
thumbnails decodes a tile for every cell of a target.

Stages: options (`options.py`) -> network (`model.py`, torch) -> training on a database's
thumbnails with checkpoints (`train.py`) -> model folder on disk, safetensors + JSON, checked
as untrusted input (`files.py`) -> per-cell fit: encoder, atlas, Adam, colour fit (`fit.py`) ->
decoded tiles into their own tile database (`aedb.py`) -> a saved assignment, rendered like any
other (`make.py`). torch is imported only when a model is built or loaded (extra `gen`).
"""
from .options import Arch, AutoOptions, TrainOptions

__all__ = ["Arch", "AutoOptions", "TrainOptions"]
