"""npmlp: the makemore lectures' character-level language models in pure NumPy, with every
gradient written by hand.

The package root is the course, in reading order: data.py (words -> Vocab -> X, Y -> splits),
layers.py (forward/backward pairs), mlp.py (lecture 2), deep.py (part 3), bn.py (part 4),
wavenet.py (part 5), train.py (SGD, evaluate, sample), gradcheck.py (each gradient against torch
and finite differences; torch_mirrors.py is the torch side, imported lazily). Below it: fast/
(the fast tier `npmlp train` runs) and app/ (the `npmlp` command).
"""
from .data import Vocab, build_dataset, load_words, split_words
from .mlp import MLP
from .train import TrainConfig, evaluate, sample, sgd

__all__ = ["MLP", "TrainConfig", "Vocab", "build_dataset", "evaluate", "load_words", "sample", "sgd", "split_words"]
__version__ = "0.1.0"
