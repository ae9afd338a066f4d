"""npmlp: the makemore course's character-level language models in pure NumPy, with every
gradient written by hand.

The package root is the course, in reading order: data.py (words -> Vocab -> X, Y -> splits),
layers.py (forward/backward pairs), contract.py (what a model is, and the Spec each declares of
itself), bigram.py (part 1), mlp.py (lecture 2), deep.py (part 3), bn.py (part 4), wavenet.py
(part 5), train.py (SGD, evaluate, sample), gradcheck.py (each gradient against torch and finite
differences; torch_mirrors.py is the torch side, imported lazily), loading.py (finding and
reading names.txt). Below it: fast/ (the fast tier `npmlp train` runs) and app/ (the `npmlp`
command).
"""
from .bigram import Bigram
from .contract import Model, Spec, from_makemore, to_makemore
from .data import Vocab, build_dataset, split_words
from .loading import load_words
from .mlp import MLP
from .recurrent import GRU, LSTM, RNN
from .train import AdamW, TrainConfig, evaluate, sample, sgd
from .transformer import BoW, Transformer

__all__ = ["GRU", "LSTM", "MLP", "RNN", "AdamW", "Bigram", "BoW", "Model", "Spec", "TrainConfig", "Transformer",
           "Vocab", "build_dataset", "evaluate", "from_makemore", "load_words", "sample", "sgd", "split_words",
           "to_makemore"]
__version__ = "0.1.0"
