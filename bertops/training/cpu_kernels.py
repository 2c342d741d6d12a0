"""bertops's C++ CPU training kernels (csrc/cpu_kernels.cpp), built once per machine and instruction set.

torch's C++ extension builder compiles them at first use (about 25 s on 2 cores; it needs a C++ compiler and
ninja) and caches the build under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); later processes load it
in well under a second. The build targets torch's CPU capability (AVX-512 or AVX2) rather than the build host's
every feature, and its name carries that capability, so a cache shared between hosts never hands one host another's
instructions. Where it cannot be built, `load` returns None once with a warning, and the levers that use it
(train.fused_attention_probs, train.fused_dropout_add_norm) leave the model on its eager path.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
_ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c"],
              "AVX2": ["-mavx2", "-mfma", "-mf16c"]}


@functools.cache
def load():
    """The built extension module, or None where it cannot be built here."""
    from torch.utils.cpp_extension import load as build

    isa = torch.backends.cpu.get_cpu_capability()
    flags = _ISA_FLAGS.get(isa.replace("_ZMM", "").replace("_VNNI", ""), [])
    try:
        return build(name=f"bertops_cpu_kernels_{isa.lower()}", sources=[str(SOURCE)],
                     extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: the eager paths stay
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("bertops's CPU kernels could not be built (%s); training stays on the eager path", reason)
        return None
