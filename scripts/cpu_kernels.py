"""Pin the CPU kernel set every numeric library uses, so a retrain is byte-identical anywhere.

Training is deterministic for one torch version, thread count and *kernel set*; without a pin
each library picks the widest vector instructions the CPU has (AVX-512 on one machine, AVX2 on
another) and the rounding differs. Two retrains of us_breast, one on an AVX-512 machine and
one on an AVX2 machine, differed in the last bit of one Cholesky entry until numpy's OpenBLAS
was pinned too. AVX2 is the widest set every x86-64 server of the last decade has; on a CPU
without it (ARM) the pins are ignored, ``torch_cpu_capability`` in metrics.json records what
was used, and ``make reproduce`` checks the retrain with tolerances instead of bytes.

The variables are read when each library loads, so this module must be imported before numpy,
torch or onnxruntime; it refuses to run late rather than pin nothing silently. A value already
in the environment wins (to try another kernel set on purpose).
"""

from __future__ import annotations

import os
import sys

PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # torch's oneDNN convolutions
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # torch's MKL (matmul, LAPACK)
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's OpenBLAS (np.linalg: the OOD head's Cholesky)
}

_late = sorted({"numpy", "torch", "onnxruntime"} & set(sys.modules))
if _late:
    raise RuntimeError(f"import cpu_kernels before {', '.join(_late)}: the pins would be ignored")
for _name, _value in PINS.items():
    os.environ.setdefault(_name, _value)
