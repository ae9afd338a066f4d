"""npmlp: the makemore part 2 character-level MLP in pure NumPy, with every gradient written by hand.

data.py (words -> Vocab -> X, Y -> splits) -> layers.py (forward/backward pairs) -> model.py (MLP)
-> train.py (SGD, evaluate, sample) -> cli.py. torch appears only in reference.py, imported lazily.
"""
from .data import Vocab, build_dataset, load_words, split_words
from .errors import NpmlpError
from .model import MLP
from .train import TrainConfig, evaluate, sample, sgd

__all__ = ["MLP", "NpmlpError", "TrainConfig", "Vocab", "build_dataset", "evaluate", "load_words",
           "sample", "sgd", "split_words"]
__version__ = "0.1.0"
