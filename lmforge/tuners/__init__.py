"""One registry: tuner name -> how to wrap the model for training; plus what the tuners add to the Trainer."""
from lmforge.tuners.registry import TUNERS, prepare_model

__all__ = ['TUNERS', 'prepare_model']
