import os

import pytest
import torch

# On a machine without a GPU the Triton kernels run in the Triton interpreter; the variable must
# be set before triton is first imported (the kernels are JIT-decorated at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


if torch.cuda.is_available():

    @pytest.fixture(autouse=True)
    def _release_cached_gpu_memory():
        """The GPU suite runs several xdist workers on one device: a worker's cached blocks would
        starve the others (the float64 references of the large shapes take GiBs)."""
        yield
        torch.cuda.empty_cache()


def pytest_collection_modifyitems(config, items):
    """``TK_TEST_SHARD=i/n`` keeps every n-th test starting at the i-th (1-based), so the GPU
    suite (longer than one 10-minute device call) runs in n calls: scripts/gpu_job.sh."""
    shard = os.environ.get("TK_TEST_SHARD")
    if not shard:
        return
    i, n = (int(x) for x in shard.split("/"))
    if not 1 <= i <= n:
        raise ValueError(f"TK_TEST_SHARD must be i/n with 1 <= i <= n, got {shard!r}")
    keep = [item for idx, item in enumerate(items) if idx % n == i - 1]
    config.hook.pytest_deselected(items=[item for idx, item in enumerate(items) if idx % n != i - 1])
    items[:] = keep


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The csrc kernels built for the host emulation (tests/emu_harness.py), once per session."""
    from emu_harness import CXX, build_emu

    if CXX is None:
        pytest.skip("g++ is not installed")
    return build_emu(tmp_path_factory.mktemp("emu"))
