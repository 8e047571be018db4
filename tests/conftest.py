"""Suite-wide settings.

`make test` runs two xdist workers on a 2-core machine; tiny-tensor tests run up to 10x
slower when each worker also spreads torch ops over several threads, so each worker
uses one. (Kernels' own numba thread pools are unaffected.)
"""

import torch

torch.set_num_threads(1)
