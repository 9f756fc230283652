import os

import torch

# On a machine without a GPU the Triton kernels run in the Triton interpreter; the variable must
# be set before triton is first imported (the kernels are JIT-decorated at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
