"""makemore.py's bag of words and Transformer (--type bow, --type transformer): the chapter after
the recurrent models. Every position of a name reads all the positions before it at once, by a
uniform average (the bag of words) or by learned attention (the Transformer, GPT-2 as makemore.py
writes it, with nanoGPT's dropout as an option: 0 in the model the API builds, 0.1 in `npmlp train`'s
recipe).

    bow          emb = wte[X] + wpe[pos]                        emb
                 x = emb + cbow(emb)                            context_block.cbow, context_block.resid_cbow
                 x = x + c_proj(tanh(c_fc(x)))                  context_block.mlp.{c_fc,tanh}, .mlp, context_block
                 logits = x @ lm_head + b                       logits
    transformer  x = drop(wte[X] + wpe[pos])                    emb, x0
                 for each block i:
                   x = x + drop(c_proj(att(c_attn(ln_1(x)))))   h.i.ln_1, h.i.attn.c_proj, h.i.attn, h.i.resid_attn
                   x = x + drop(c_proj(gelu(c_fc(ln_2(x)))))    h.i.ln_2, h.i.mlp.{c_fc,act,c_proj}, h.i.mlp, h.i
                 logits = ln_f(x) @ lm_head                     ln_f, logits

Legend: B batch, T positions (block_size, or fewer: sampling feeds prefixes), C n_embd, H n_hidden
(makemore.py's n_embd2, the bag of words' MLP), V vocab size, L n_layers, nh n_head, hs head size
C / nh. The parameters are makemore.py's state_dict keys, each Linear weight in NumPy's (in, out).
The intermediates are named by makemore.py's module paths (h.i.attn is what the block's attention
adds to the stream, h.i.att its weights (B, nh, T, T)); resid_* is the stream after a residual sum.

The forward calls layers.py's pairs in order, each output kept by name (`keep`, so gradcheck's
`at` can replace it), each pair's cache beside it; the backward calls their backwards in reverse.
Dropout sits at nanoGPT's places: after the embeddings' sum, on the attention weights after the
softmax, after each residual branch's projection. Its masks are drawn in the forward's order from
a generator seeded by (the model's dropout seed, how many dropout forwards it has run), kept in
the buffer `dropout_state`, so a run resumed from a checkpoint draws the masks it would have drawn.
"""
from __future__ import annotations

import math

import numpy as np

from .contract import (
    MAKEMORE_BLOCK,
    MAKEMORE_COSINE,
    MAKEMORE_TRAIN,
    SEED,
    SEQUENCES,
    Intermediates,
    Makemore,
    Model,
    Option,
    Spec,
    own_params,
    with_defaults,
)
from .layers import (
    EmbeddingCache,
    LinearCache,
    causal_average_backward,
    causal_average_forward,
    causal_self_attention_backward,
    causal_self_attention_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    masked_cross_entropy_backward,
    masked_cross_entropy_forward,
    residual_backward,
    residual_forward,
    tanh_backward,
    tanh_forward,
)

BOW = Spec(
    kind="bow", title="makemore.py's bag of words: a causal average of the embeddings, then an MLP",
    options=(Option("n_embd", 64, "channels C of the embeddings and the residual stream", makemore="--n-embd"),
             Option("n_hidden", 64, "hidden units H of the block's MLP (makemore.py's --n-embd2)",
                    makemore="--n-embd2")),
    train=MAKEMORE_COSINE,
    data=SEQUENCES, mirror="bow_forward", embedding="wte.weight",
    engine="bow",
    makemore=Makemore(type="bow", transposed=("context_block.mlp.c_fc.weight", "context_block.mlp.c_proj.weight",
                                              "lm_head.weight"), ignored=("cbow.bias",)))

TRANSFORMER = Spec(
    kind="transformer", title="makemore.py's Transformer: GPT-2's blocks of causal self-attention and an MLP",
    options=(Option("n_embd", 64, "channels C of the embeddings and every block", makemore="--n-embd"),
             Option("n_layers", 4, "Transformer blocks (makemore.py's --n-layer)", repeats=True, makemore="--n-layer"),
             Option("n_head", 4, "attention heads per block; must divide --n-embd", makemore="--n-head"),
             Option("dropout", 0.1, "dropout probability in training, at nanoGPT's places (0: makemore.py's model)",
                    type=float, minimum=0, maximum=1, metavar="P", makemore_value=0.0)),
    # makemore.py's recipe overfits names.txt (dev best at 10,000 steps, then worse): npmlp's default
    # is what its users reach for, nanoGPT's: dropout 0.1, a cosine decay of the rate to 5e-5 over the
    # run (--steps rescales it), weight decay 0.1 on the matrices only, the best dev estimate kept
    train={**MAKEMORE_TRAIN, "steps": 20_000, "schedule": "cosine", "lr_decayed": 5e-5, "weight_decay": 0.1,
           "decay_matrices_only": True},
    data=SEQUENCES, mirror="transformer_forward",
    unshaped=("n_head", "dropout"), embedding="transformer.wte.weight", engine="transformer",
    makemore=Makemore(type="transformer", transposed=("c_attn.weight", "c_proj.weight", "c_fc.weight",
                                                      "lm_head.weight"), ignored=(".attn.bias",)))


# ----------------------------------------------------------------------------- shared by both models

def torch_init(shapes: dict, rng) -> dict:
    """torch's default init of makemore.py's modules, drawn (float64) in the order of `shapes` from
    rng: nn.Embedding N(0, 1); nn.Linear weight and bias uniform in +-1/sqrt(fan_in); LayerNorm
    weight 1, bias 0. The module of a key is its second-to-last part (wte, ln_1, c_attn...)."""
    p = {}
    for k, s in shapes.items():
        module = k.split(".")[-2]
        if module in ("wte", "wpe"):
            p[k] = rng.standard_normal(s)
        elif module.startswith("ln_"):
            p[k] = (np.ones if k.endswith("weight") else np.zeros)(s)
        else:
            fan_in = shapes[k[:-len("bias")] + "weight"][0] if k.endswith("bias") else s[0]
            bound = 1 / math.sqrt(fan_in)
            p[k] = rng.uniform(-bound, bound, s)
    return p


def check_block_size(block_size) -> int:
    T = MAKEMORE_BLOCK if block_size is None else block_size
    if int(T) != T or T < 1:
        raise ValueError(f"block_size must be a whole number >= 1, got {block_size}")
    return int(T)


def keeper(c: Intermediates):
    """keep(name, (out, cache)) -> out, kept in c as `name` (or the array c's `at` gives for it,
    which is what the rest of the forward then reads), the pair's cache in c.caches[name]."""
    def keep(name, pair):
        out, c.caches[name] = pair
        setattr(c, name, out)
        return c[name]
    return keep


def embed(wte, wpe, X):
    """wte (V, C), wpe (block_size, C), X (B, T) -> emb (B, T, C) = wte[X] + wpe[0..T-1]."""
    tok_emb, _ = embedding_forward(wte, X)                        # (B, T, C)
    pos_emb, _ = embedding_forward(wpe, np.arange(X.shape[1]))    # (T, C) positions 0..T-1
    return tok_emb + pos_emb                                      # (B, T, C)


def embed_backward(demb, wte, wpe, X):
    """demb (B, T, C) -> dwte (V, C), dwpe (block_size, C), emb = wte[X] + wpe[pos]'s gradients."""
    # dwte[i] = demb summed over every place where X is i
    dwte = embedding_backward(demb, EmbeddingCache(X, len(wte)))                                   # (V, C)
    # wpe[pos] (T, C) was broadcast over the batch: its gradient sums over B; rows >= T get 0
    dwpe = embedding_backward(demb.sum(0), EmbeddingCache(np.arange(X.shape[1]), len(wpe)))        # (block_size, C)
    return dwte, dwpe


def stream_norms(streams) -> np.ndarray:
    """The mean length of a position's vector in each residual stream (B, T, C) -> (len(streams),)."""
    return np.array([float(np.linalg.norm(np.asarray(x, np.float64), axis=-1).mean()) for x in streams])


# ----------------------------------------------------------------------------- the bag of words

def bow_shapes(vocab_size, block_size, n_embd, n_hidden, **_):
    """The parameters, in makemore.py's state_dict order (its buffer context_block.cbow.bias aside)."""
    V, T, C, H = vocab_size, block_size, n_embd, n_hidden
    return {"wte.weight": (V, C), "wpe.weight": (T, C),
            "context_block.mlp.c_fc.weight": (C, H), "context_block.mlp.c_fc.bias": (H,),
            "context_block.mlp.c_proj.weight": (H, C), "context_block.mlp.c_proj.bias": (C,),
            "lm_head.weight": (C, V), "lm_head.bias": (V,)}


class BoW(Model):
    """params: makemore.py's BoW state_dict without its buffer: wte.weight (V, C), wpe.weight (T, C),
    context_block.mlp.c_fc (C, H) and c_proj (H, C) with biases, lm_head (C, V) with a bias."""

    spec = BOW
    act_names = ("logits", "context_block", "context_block.mlp", "context_block.mlp.tanh", "context_block.mlp.c_fc",
                 "context_block.resid_cbow", "context_block.cbow", "emb")   # backward order
    tanh_names = ("context_block.mlp.tanh",)

    @staticmethod
    def shapes(vocab_size: int, **sizes) -> dict[str, tuple[int, ...]]:
        return bow_shapes(vocab_size, **sizes)

    @staticmethod
    def activation_shapes(batch, vocab_size, block_size, n_embd, n_hidden, **_):
        B, T, C, H, V = batch, block_size, n_embd, n_hidden, vocab_size
        return {"emb": (B, T, C), "context_block.cbow": (B, T, C), "context_block.resid_cbow": (B, T, C),
                "context_block.mlp.c_fc": (B, T, H), "context_block.mlp.tanh": (B, T, H),
                "context_block.mlp": (B, T, C), "context_block": (B, T, C), "logits": (B, T, V), "probs": (B, T, V)}

    def __init__(self, params, buffers=None):
        V, C = np.shape(params.get("wte.weight", ()))[:2] or (0, 0)
        T = np.shape(params.get("wpe.weight", ()))[:1] or (0,)
        H = np.shape(params.get("context_block.mlp.c_fc.weight", ()))[1:2] or (0,)
        self.params = own_params(params, bow_shapes(V, T[0], C, H[0]))
        self.buffers = {}
        self.param_names = tuple(self.params)
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, T[0], C, H[0]

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, seed=SEED, dtype=np.float32):
        """torch's default init (torch_init), drawn from np.random.default_rng(seed)."""
        sizes = with_defaults(cls, vocab_size, n_embd=n_embd, n_hidden=n_hidden)
        shapes = bow_shapes(vocab_size, check_block_size(block_size), **sizes)
        p = torch_init(shapes, np.random.default_rng(seed))
        return cls({k: v.astype(dtype) for k, v in p.items()})   # float64 draws: one init for both dtypes

    def makemore_buffers(self):
        """CausalBoW's causal mask, as makemore.py registers it: (1, T, T) ones on and below the diagonal."""
        T = self.block_size
        return {"context_block.cbow.bias": np.tril(np.ones((T, T), self.dtype)).reshape(1, T, T)}

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, T, V); with targets Y (B, T) (-1 masked) -> (loss, c: every
        intermediate by name). at: {name: array} in place of that intermediate. No dropout: training
        and inference are the same function."""
        c = self.intermediates(X, Y, at)
        if Y is None:
            return c.logits
        loss, c.ce = masked_cross_entropy_forward(c.logits, Y)                                     # () unmasked targets
        return loss, c

    def intermediates(self, X, Y=None, at=None, training=True) -> Intermediates:
        """The forward up to the logits: every intermediate by name, the pairs' caches in c.caches."""
        X, Y = self.check_inputs(X, Y)                          # (B, t) indices in 0..V-1 (contract.py)
        P = self.params
        c = Intermediates(at, X=X, Y=Y, caches={})
        keep = keeper(c)
        c.emb = embed(P["wte.weight"], P["wpe.weight"], X)                                         # (B, T, C)
        cbow = keep("context_block.cbow", causal_average_forward(c.emb))                           # (B, T, C)
        x = keep("context_block.resid_cbow", residual_forward(c.emb, cbow))                        # (B, T, C)
        fc = keep("context_block.mlp.c_fc", linear_forward(x, P["context_block.mlp.c_fc.weight"],
                                                           P["context_block.mlp.c_fc.bias"]))     # (B, T, H)
        h = keep("context_block.mlp.tanh", tanh_forward(fc))                                       # (B, T, H)
        mlp = keep("context_block.mlp", linear_forward(h, P["context_block.mlp.c_proj.weight"],
                                                       P["context_block.mlp.c_proj.bias"]))       # (B, T, C)
        x = keep("context_block", residual_forward(x, mlp))                                        # (B, T, C)
        keep("logits", linear_forward(x, P["lm_head.weight"], P["lm_head.bias"]))                  # (B, T, V)
        return c

    def backward(self, c):
        """-> (grads, dacts), each in the order computed: the forward's pairs in reverse."""
        P = self.params
        W_fc, W_proj, W_lm = (P[f"{k}.weight"] for k in ("context_block.mlp.c_fc", "context_block.mlp.c_proj",
                                                          "lm_head"))
        # dlogits = (probs - onehot(Y)) / n at the n targets that count, 0 where masked
        dlogits = masked_cross_entropy_backward(1.0, c.ce)                                          # (B, T, V)
        # dx = dlogits @ W_lm.T, dW_lm = context_block.T @ dlogits, db_lm = dlogits summed over (B, T)
        dblock, dW_lm, db_lm = linear_backward(dlogits, LinearCache(c["context_block"], W_lm))     # (B, T, C)
        # context_block = resid_cbow + mlp: the sum hands its gradient to both
        dresid_skip, dmlp = residual_backward(dblock)                                              # (B, T, C) each
        # dtanh = dmlp @ W_proj.T, dW_proj = tanh.T @ dmlp, db_proj = dmlp summed
        dh, dW_proj, db_proj = linear_backward(dmlp, LinearCache(c["context_block.mlp.tanh"], W_proj))  # (B, T, H)
        # dc_fc = (1 - tanh**2) * dtanh
        dfc = tanh_backward(dh, c.caches["context_block.mlp.tanh"])                                # (B, T, H)
        # dresid = dc_fc @ W_fc.T, dW_fc = resid_cbow.T @ dc_fc, db_fc = dc_fc summed
        dresid_mlp, dW_fc, db_fc = linear_backward(dfc, LinearCache(c["context_block.resid_cbow"], W_fc))  # (B, T, C)
        # resid_cbow reaches the loss (1) by the skip, (2) through the MLP
        dresid = dresid_skip + dresid_mlp                                                          # (B, T, C)
        # resid_cbow = emb + cbow
        demb_skip, dcbow = residual_backward(dresid)                                               # (B, T, C) each
        # cbow_t = mean of emb_0..emb_t: demb_s = sum over t >= s of dcbow_t / (t + 1)
        demb_avg = causal_average_backward(dcbow, c.caches["context_block.cbow"])                  # (B, T, C)
        demb = demb_skip + demb_avg                                                                # (B, T, C)
        dwte, dwpe = embed_backward(demb, P["wte.weight"], P["wpe.weight"], c.X)                   # (V, C), (T, C)
        grads = {"lm_head.weight": dW_lm, "lm_head.bias": db_lm,
                 "context_block.mlp.c_proj.weight": dW_proj, "context_block.mlp.c_proj.bias": db_proj,
                 "context_block.mlp.c_fc.weight": dW_fc, "context_block.mlp.c_fc.bias": db_fc,
                 "wte.weight": dwte, "wpe.weight": dwpe}
        dacts = {"logits": dlogits, "context_block": dblock, "context_block.mlp": dmlp, "context_block.mlp.tanh": dh,
                 "context_block.mlp.c_fc": dfc, "context_block.resid_cbow": dresid, "context_block.cbow": dcbow,
                 "emb": demb}
        return grads, dacts

    def residual_norms(self, X) -> np.ndarray:
        """(2,): the mean length of a position's vector in the stream before the block (emb) and after it."""
        c = self.intermediates(X, training=False)
        return stream_norms([c.emb, c["context_block"]])


# ----------------------------------------------------------------------------- the Transformer

DROPOUT_STATE = "dropout_state"     # buffer (2,): the dropout seed, and how many dropout forwards have run
DROPOUT_STREAM = 0x64726F70          # 'drop': keeps the masks' generators apart from train.py's (seed, block) ones
EXACT = 2 ** 24                      # float32 holds every whole number below this exactly


def transformer_shapes(vocab_size, block_size, n_embd, n_layers, **_):
    """The parameters, in makemore.py's state_dict order (its buffers, the h.i.attn.bias masks, aside)."""
    V, T, C = vocab_size, block_size, n_embd
    s = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C)}
    for i in range(n_layers):
        k = f"transformer.h.{i}."
        s.update({k + "ln_1.weight": (C,), k + "ln_1.bias": (C,),
                  k + "attn.c_attn.weight": (C, 3 * C), k + "attn.c_attn.bias": (3 * C,),
                  k + "attn.c_proj.weight": (C, C), k + "attn.c_proj.bias": (C,),
                  k + "ln_2.weight": (C,), k + "ln_2.bias": (C,),
                  k + "mlp.c_fc.weight": (C, 4 * C), k + "mlp.c_fc.bias": (4 * C,),
                  k + "mlp.c_proj.weight": (4 * C, C), k + "mlp.c_proj.bias": (C,)})
    s.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (C, V)})
    return s


def block_act_names(i: int) -> tuple[str, ...]:
    """Block i's intermediates that get a gradient, in backward order (its input is the block before's output)."""
    n = f"h.{i}"
    return (n, f"{n}.mlp", f"{n}.mlp.c_proj", f"{n}.mlp.act", f"{n}.mlp.c_fc", f"{n}.ln_2", f"{n}.resid_attn",
            f"{n}.attn", f"{n}.attn.c_proj", f"{n}.ln_1")


def dropout_mask(shape, p, rng, dtype):
    """The mask dropout_forward would draw for an array of this shape (0, or 1 / (1 - p)), None for p = 0."""
    if p == 0:
        return None
    return dropout_forward(np.ones(shape, dtype), p, rng)[1].mask


def head_message(n_embd, n_head) -> str | None:
    """Why n_head heads cannot split n_embd channels, in the options' flags; None if they can."""
    if n_head < 1 or n_embd % n_head == 0:
        return None                          # n_head < 1: outside its option's bounds, refused there
    divisors = [h for h in range(1, n_embd + 1) if n_embd % h == 0]
    near = [max(h for h in divisors if h < n_head), *[h for h in divisors if h > n_head][:1]]
    return (f"--n-embd {n_embd} is not divisible by --n-head {n_head}: each head reads n_embd / n_head channels; "
            f"use an --n-head that divides it ({' or '.join(map(str, near))}) or another --n-embd")


class Transformer(Model):
    """params: makemore.py's Transformer state_dict without its buffers (transformer.wte.weight (V, C),
    transformer.wpe.weight (T, C), the blocks transformer.h.i.*, transformer.ln_f, lm_head.weight
    (C, V), no bias). buffers: dropout_state (2,), the dropout seed and the count of dropout forwards.
    n_head and dropout are not shown by any shape: the constructor takes them."""

    spec = TRANSFORMER
    tanh_names = ()                          # GELU, not tanh: no saturation to read

    @staticmethod
    def shapes(vocab_size: int, **sizes) -> dict[str, tuple[int, ...]]:
        return transformer_shapes(vocab_size, **sizes)

    @staticmethod
    def buffer_shapes(vocab_size, **sizes):
        return {DROPOUT_STATE: (2,)}

    @staticmethod
    def activation_shapes(batch, vocab_size, block_size, n_embd, n_layers, n_head, **_):
        """The arrays of a training step, each block's summed into three entries (a size that counts
        layers may be large: no per-layer listing)."""
        B, T, C, L, V = batch, block_size, n_embd, n_layers, vocab_size
        # per block: 11 (B, T, C) intermediates and caches (ln xhats, q, k, v, y, masks); 3 (B, T, 4C);
        # the attention's scores, weights and dropout mask (B, nh, T, T)
        return {"emb": (B, T, C), "x0": (B, T, C), "blocks (B, T, C)": (16 * L, B, T, C),
                "blocks (B, T, 4C)": (3 * L, B, T, 4 * C), "blocks (B, nh, T, T)": (3 * L, B, n_head, T, T),
                "ln_f": (B, T, C), "logits": (B, T, V), "probs": (B, T, V)}

    @classmethod
    def check_options(cls, sizes):
        """n_head must divide n_embd: each head reads n_embd / n_head channels."""
        d = cls.spec.defaults
        why = head_message(sizes.get("n_embd", d["n_embd"]), sizes.get("n_head", d["n_head"]))
        if why:
            raise ValueError(why)

    def __init__(self, params, buffers=None, n_head=TRANSFORMER.defaults["n_head"],
                 dropout=TRANSFORMER.model_defaults["dropout"]):
        V, C = np.shape(params.get("transformer.wte.weight", ()))[:2] or (0, 0)
        T = (np.shape(params.get("transformer.wpe.weight", ()))[:1] or (0,))[0]
        L = 0
        while f"transformer.h.{L}.ln_1.weight" in params:
            L += 1
        if int(n_head) != n_head or n_head < 1 or C % n_head:
            raise ValueError(f"n_head={n_head} does not divide the params' n_embd={C} into heads")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.params = own_params(params, transformer_shapes(V, T, C, L))
        self.vocab_size, self.block_size, self.n_embd, self.n_layers = V, T, C, L
        self.n_head, self.dropout = int(n_head), float(dropout)
        given = (buffers or {}).get(DROPOUT_STATE)                 # none from makemore.py: seed SEED, step 0
        state = np.array([SEED % EXACT, 0] if given is None else given, self.dtype)
        if state.shape != (2,) or not (np.isfinite(state).all() and (state >= 0).all() and (state % 1 == 0).all()):
            raise ValueError(f"{DROPOUT_STATE} must be two whole numbers >= 0 (seed, dropout forwards), got {state}")
        self.buffers = {DROPOUT_STATE: state}
        self.param_names = tuple(self.params)
        self.act_names = ("logits", "ln_f", *(a for i in reversed(range(L)) for a in block_act_names(i)), "x0", "emb")

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_layers=None, n_head=None, dropout=None, seed=SEED,
             dtype=np.float32):
        """torch's default init (torch_init), drawn from np.random.default_rng(seed) (makemore.py
        applies no init of its own); the dropout masks' seed is seed mod 2^24 (exact in float32)."""
        sizes = with_defaults(cls, vocab_size, n_embd=n_embd, n_layers=n_layers, n_head=n_head, dropout=dropout)
        cls.check_options(sizes)
        shapes = transformer_shapes(vocab_size, check_block_size(block_size), **sizes)
        p = torch_init(shapes, np.random.default_rng(seed))
        state = np.array([seed % EXACT, 0], dtype)
        return cls({k: v.astype(dtype) for k, v in p.items()}, {DROPOUT_STATE: state}, sizes["n_head"],
                   sizes["dropout"])

    def without_dropout(self):
        return self if not self.dropout else self.from_params(self.params, {**self.sizes, "dropout": 0.0},
                                                                self.buffers)

    def makemore_buffers(self):
        """Each CausalSelfAttention's mask, as makemore.py registers it: (1, 1, T, T) ones on and below the diagonal."""
        T = self.block_size
        mask = np.tril(np.ones((T, T), self.dtype)).reshape(1, 1, T, T)
        return {f"transformer.h.{i}.attn.bias": mask.copy() for i in range(self.n_layers)}

    # ------------------------------------------------------------------------- dropout's generator

    @property
    def dropout_step(self) -> int:
        """How many training forwards have drawn dropout masks (the next one draws with this number)."""
        return int(self.buffers[DROPOUT_STATE][1])

    def dropout_rng(self):
        """The generator of this training forward's masks, seeded by (dropout seed, dropout_step);
        the step count then moves on by one. Its state is the buffer, which a checkpoint keeps."""
        state = self.buffers[DROPOUT_STATE]
        seed, step = int(state[0]), int(state[1])
        if step + 1 >= EXACT and self.dtype == np.float32:
            raise ValueError(f"a float32 Transformer counts {EXACT:,} dropout steps at most; train in float64")
        state[1] = step + 1
        return np.random.default_rng([DROPOUT_STREAM, seed, step])

    # ------------------------------------------------------------------------- forward

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, T, V); with targets Y (B, T) (-1 masked) -> (loss, c: every
        intermediate by name). Training mode with dropout > 0 drops at nanoGPT's places, with masks
        from dropout_rng(); inference never drops. at: {name: array} in place of that intermediate."""
        c = self.intermediates(X, Y, at, training)
        if Y is None:
            return c.logits
        loss, c.ce = masked_cross_entropy_forward(c.logits, Y)                                    # () unmasked targets
        return loss, c

    def intermediates(self, X, Y=None, at=None, training=True) -> Intermediates:
        """The forward up to the logits: every intermediate by name, the pairs' caches in c.caches."""
        X, Y = self.check_inputs(X, Y)                          # (B, t) indices in 0..V-1 (contract.py)
        P = self.params
        p = self.dropout if training else 0.0                       # inference never drops
        rng = self.dropout_rng() if p > 0 else None                 # masks drawn in the forward's order
        c = Intermediates(at, X=X, Y=Y, caches={})
        keep = keeper(c)
        c.emb = embed(P["transformer.wte.weight"], P["transformer.wpe.weight"], X)                  # (B, T, C)
        x = keep("x0", dropout_forward(c.emb, p, rng))                                               # (B, T, C)
        for i in range(self.n_layers):
            x = self.block_forward(i, x, c, p, rng)                                                  # (B, T, C)
        ln_f = keep("ln_f", layernorm_forward(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"]))  # (B, T, C)
        keep("logits", linear_forward(ln_f, P["lm_head.weight"]))                                    # (B, T, V) no bias
        return c

    def block_forward(self, i, x, c, p, rng):
        """Block i: x (B, T, C) -> x + attn(ln_1(x)), then + mlp(ln_2(.)), each branch's output dropped
        with probability p (the attention weights too)."""
        P, n, k, keep = self.params, f"h.{i}", f"transformer.h.{i}.", keeper(c)
        B, T, C = x.shape
        ln_1 = keep(f"{n}.ln_1", layernorm_forward(x, P[k + "ln_1.weight"], P[k + "ln_1.bias"]))            # (B, T, C)
        att_mask = dropout_mask((B, self.n_head, T, T), p, rng, x.dtype)                                 # (B, nh, T, T)
        proj = keep(f"{n}.attn.c_proj", causal_self_attention_forward(
            ln_1, P[k + "attn.c_attn.weight"], P[k + "attn.c_attn.bias"], P[k + "attn.c_proj.weight"],
            P[k + "attn.c_proj.bias"], self.n_head, att_mask))                                               # (B, T, C)
        c[f"{n}.att"] = c.caches[f"{n}.attn.c_proj"].att                          # (B, nh, T, T) the weights, to draw
        attn = keep(f"{n}.attn", dropout_forward(proj, p, rng))                                              # (B, T, C)
        x = keep(f"{n}.resid_attn", residual_forward(x, attn))                                               # (B, T, C)
        ln_2 = keep(f"{n}.ln_2", layernorm_forward(x, P[k + "ln_2.weight"], P[k + "ln_2.bias"]))            # (B, T, C)
        fc = keep(f"{n}.mlp.c_fc", linear_forward(ln_2, P[k + "mlp.c_fc.weight"], P[k + "mlp.c_fc.bias"]))  # (B, T, 4C)
        act = keep(f"{n}.mlp.act", gelu_forward(fc))                                                        # (B, T, 4C)
        proj = keep(f"{n}.mlp.c_proj", linear_forward(act, P[k + "mlp.c_proj.weight"], P[k + "mlp.c_proj.bias"]))
        mlp = keep(f"{n}.mlp", dropout_forward(proj, p, rng))                                                # (B, T, C)
        return keep(n, residual_forward(x, mlp))                                                             # (B, T, C)

    # ------------------------------------------------------------------------- backward

    def backward(self, c):
        """-> (grads, dacts), each in the order computed: the forward's pairs in reverse."""
        P, L, cc = self.params, self.n_layers, c.caches
        grads, dacts = {}, {}
        # dlogits = (probs - onehot(Y)) / n at the n targets that count, 0 where masked
        dlogits = dacts["logits"] = masked_cross_entropy_backward(1.0, c.ce)                       # (B, T, V)
        # dln_f = dlogits @ W_lm.T, dW_lm = ln_f.T @ dlogits (lm_head has no bias)
        dln_f, grads["lm_head.weight"], _ = linear_backward(dlogits, LinearCache(c.ln_f, P["lm_head.weight"], False))
        dacts["ln_f"] = dln_f                                                                      # (B, T, C)
        # ln_f: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = w * dln_f
        dx, grads["transformer.ln_f.weight"], grads["transformer.ln_f.bias"] = layernorm_backward(dln_f, cc["ln_f"])
        for i in reversed(range(L)):
            dx = self.block_backward(i, dx, c, grads, dacts)                                        # (B, T, C)
        dacts["x0"] = dx
        # the embeddings' dropout: demb = dx0 * mask, the forward's mask
        demb = dacts["emb"] = dropout_backward(dx, cc["x0"])                                       # (B, T, C)
        grads["transformer.wte.weight"], grads["transformer.wpe.weight"] = embed_backward(
            demb, P["transformer.wte.weight"], P["transformer.wpe.weight"], c.X)                  # (V, C), (T, C)
        return grads, dacts

    def block_backward(self, i, dh, c, grads, dacts):
        """Block i's backward: dh (B, T, C), the gradient of its output -> that of its input; each
        parameter's gradient into grads, each intermediate's into dacts."""
        P, n, k, cc = self.params, f"h.{i}", f"transformer.h.{i}.", c.caches
        dacts[n] = dh
        # h = resid_attn + mlp: the sum hands dh to both
        dresid_skip, dmlp = residual_backward(dh)                                                  # (B, T, C) each
        dacts[f"{n}.mlp"] = dmlp
        # the MLP's dropout: dproj = dmlp * mask, the forward's mask
        dproj = dacts[f"{n}.mlp.c_proj"] = dropout_backward(dmlp, cc[f"{n}.mlp"])                  # (B, T, C)
        # c_proj: dact = dproj @ W.T, dW = act.T @ dproj, db = dproj summed over (B, T)
        W = P[k + "mlp.c_proj.weight"]
        dact, grads[k + "mlp.c_proj.weight"], grads[k + "mlp.c_proj.bias"] = linear_backward(
            dproj, LinearCache(c[f"{n}.mlp.act"], W))                                              # (B, T, 4C)
        dacts[f"{n}.mlp.act"] = dact
        # GELU: dc_fc = dact * gelu'(c_fc), gelu' from c_fc and its tanh (the forward's)
        dfc = dacts[f"{n}.mlp.c_fc"] = gelu_backward(dact, cc[f"{n}.mlp.act"])                     # (B, T, 4C)
        # c_fc: dln_2 = dc_fc @ W.T, dW = ln_2.T @ dc_fc, db = dc_fc summed
        W = P[k + "mlp.c_fc.weight"]
        dln_2, grads[k + "mlp.c_fc.weight"], grads[k + "mlp.c_fc.bias"] = linear_backward(
            dfc, LinearCache(c[f"{n}.ln_2"], W))                                                   # (B, T, C)
        dacts[f"{n}.ln_2"] = dln_2
        # ln_2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = w * dln_2
        dresid_mlp, grads[k + "ln_2.weight"], grads[k + "ln_2.bias"] = layernorm_backward(dln_2, cc[f"{n}.ln_2"])
        # resid_attn reaches the loss (1) by the skip, (2) through ln_2 and the MLP
        dresid = dacts[f"{n}.resid_attn"] = dresid_skip + dresid_mlp                               # (B, T, C)
        # resid_attn = x + attn
        dx_skip, dattn = residual_backward(dresid)                                                 # (B, T, C) each
        dacts[f"{n}.attn"] = dattn
        # the attention's output dropout: dproj = dattn * mask
        dproj = dacts[f"{n}.attn.c_proj"] = dropout_backward(dattn, cc[f"{n}.attn"])               # (B, T, C)
        # the attention (layers.causal_self_attention_backward): its cache holds ln_1, q, k, v, the
        # weights att and their dropout mask, the merged heads y, and W_attn, W_proj
        dln_1, *dattn_params = causal_self_attention_backward(dproj, cc[f"{n}.attn.c_proj"])       # (B, T, C)
        for name, g in zip(("c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"), dattn_params,
                           strict=True):
            grads[k + "attn." + name] = g
        dacts[f"{n}.ln_1"] = dln_1
        # ln_1: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = w * dln_1
        dx_attn, grads[k + "ln_1.weight"], grads[k + "ln_1.bias"] = layernorm_backward(dln_1, cc[f"{n}.ln_1"])
        # x reaches the loss (1) by the skip, (2) through ln_1 and the attention
        return dx_skip + dx_attn                                                                   # (B, T, C)

    # ------------------------------------------------------------------------- readings

    def attention_patterns(self, X) -> dict[int, np.ndarray]:
        """Inference: each block's attention weights {i: (B, nh, T, T)}, row t a distribution over
        positions 0..t (0 above the diagonal)."""
        c = self.intermediates(X, training=False)
        return {i: c[f"h.{i}.att"] for i in range(self.n_layers)}

    def residual_norms(self, X) -> np.ndarray:
        """Inference: (L + 1,) the mean length of a position's vector in the residual stream entering
        block 0 (x0) and leaving each block."""
        c = self.intermediates(X, training=False)
        return stream_norms([c.x0, *(c[f"h.{i}"] for i in range(self.n_layers))])
