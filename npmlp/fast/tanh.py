"""The tanh the fast engines use on this CPU: NumPy's own where it is vectorised with AVX-512
(or on another architecture), else an exp form (benchmarks/README.md measures both)."""
from __future__ import annotations

import platform

import numpy as np


def tanh_exp(dtype):
    """tanh(x, out) = 1 - 2 / (exp(2x) + 1) in five vectorised passes, for CPUs where NumPy's own
    tanh runs a scalar or AVX2 loop and its exp a vectorised one (benchmarks/README.md). exp(2x)
    overflows to inf for large x, which gives 1 (sgd runs with overflow warnings off). Its
    constants are 0-d arrays of dtype, not Python numbers (engine.py's legend says why)."""
    two, one, minus_two = (np.array(c, dtype) for c in (2, 1, -2))

    def tanh(x, out):
        np.multiply(x, two, out)
        np.exp(out, out)
        np.add(out, one, out)
        np.divide(minus_two, out, out)
        np.add(out, one, out)
    return tanh


TANH_FORMS = ("np.tanh", "exp")


def tanh_form(dtype) -> str:
    """The tanh the fast step uses for dtype on this CPU: NumPy's own where it runs an AVX-512 loop,
    or on another architecture; the exp form on x86 where it runs an AVX2 or a baseline loop
    (numpy.lib.introspect says which loop runs; NumPy before 2.1 cannot say: np.tanh)."""
    try:
        from numpy.lib.introspect import opt_func_info
        loops = opt_func_info(func_name="^tanh$", signature=f"^{np.dtype(dtype).name}$")["tanh"]
        loop = loops[np.dtype(dtype).char * 2]["current"]
    except (ImportError, KeyError):
        return "np.tanh"
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return "exp" if x86 and not loop.startswith(("AVX512", "X86_V4")) else "np.tanh"


TANH: dict[np.dtype, str] = {np.dtype(t): tanh_form(t) for t in (np.float32, np.float64)}


def pick(dtype, form: str | None = None):
    """(the form's name, the function computing tanh(x, out)) for dtype: `form`, else this CPU's."""
    form = form or TANH[np.dtype(dtype)]
    return form, (np.tanh if form == "np.tanh" else tanh_exp(dtype))
