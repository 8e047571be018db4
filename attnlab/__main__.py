"""``python -m attnlab``: the ``attnlab`` command; also ``torchrun -m attnlab ...``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is set up before the command
runs (gloo on CPU, nccl on CUDA), so that everything a command does before training
(reading data, writing its run record) can already ask which rank it is.
"""

import os
import sys

if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # torch is imported only when launched by torchrun
        from .distributed.ddp import init_from_env

        init_from_env()
    from .cli import main

    sys.exit(main())
