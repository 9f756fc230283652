import os

import torch

# On a machine without a GPU the Triton kernels run in the Triton interpreter; the variable must
# be set before triton is first imported (the kernels are JIT-decorated at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


if torch.cuda.is_available():
    import pytest

    @pytest.fixture(autouse=True)
    def _release_cached_gpu_memory():
        """The GPU suite runs several xdist workers on one device: a worker's cached blocks would
        starve the others (the float64 references of the large shapes take GiBs)."""
        yield
        torch.cuda.empty_cache()
