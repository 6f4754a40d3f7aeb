"""Session fixtures and the suite's one skip policy.

The compiled core (slimgpt._core) is part of the product: a suite run without it stops at once
with an error instead of skipping or silently testing the NumPy reference in its place. Only
the CUDA cases skip, with a reason, when there is no CUDA build or device.
"""
import pytest


def pytest_sessionstart(session):
    from slimgpt._native import core

    if core() is None:
        raise pytest.UsageError("slimgpt._core (the C++ core) is not built: install the package with "
                                "`pip install .` (README) before running the tests")


@pytest.fixture(scope="session")
def golden(tmp_path_factory):
    """The oracle's golden cases, exported once per session (tests only read them)."""
    from slimgpt import oracle

    d = tmp_path_factory.mktemp("golden")
    oracle.export(d)
    return d


@pytest.fixture
def no_grad():
    """Inference only: no autograd graph for this test (modules opt in with
    `pytestmark = pytest.mark.usefixtures("no_grad")`, instead of switching it off process-wide)."""
    import torch

    with torch.no_grad():
        yield


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is faster (and steadier on a shared machine) than several."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The tiny checkpoints the export tests read, by name; each is built on first use, once per session.
_CHECKPOINTS = {
    # GQA query mode at 50%: uneven query→KV maps and dropped KV heads
    "gqa_query": lambda d: _tiny(d, "tiny-gqa", 0.5, gqa="query"),
    "gqa_balanced": lambda d: _tiny(d, "tiny-gqa", 0.4, gqa="balanced"),
    "uniform_gqa": lambda d: _tiny(d, "tiny-gqa"),                                  # tied, dense
    "uniform_mha": lambda d: _tiny(d, "tiny-llama"),                                # untied, dense
    "untied_pruned": lambda d: _tiny(d, "tiny-llama", 0.4),
    "qwen2": lambda d: _tiny(d, "tiny-qwen2"),
    "mistral": lambda d: _tiny(d, "tiny-gqa", overrides={"architecture": "mistral"}),
    "qwen2_pruned": lambda d: _tiny(d, "tiny-qwen2", 0.5),
    "flap": lambda d: _tiny(d, "tiny-llama", 0.3, method="flap"),
    "hetero": lambda d: _tiny(d, "tiny-hetero"),
    "qwen3": lambda d: _tiny(d, "tiny-qwen3"),                                      # q/k norms, head_dim != D/H
    "qwen3_pruned": lambda d: _tiny(d, "tiny-qwen3", 0.5),
    "llama3_pruned": lambda d: _tiny(d, "tiny-llama3", 0.5),                        # llama3 rope scaling
    "gqa_aligned": lambda d: _tiny(d, "tiny-gqa", 0.4, align=32),                  # --align: balanced, 32-wide
    "empty_layers": lambda d: _empty_layers(d),
}


def _tiny(folder, tiny, ratio=None, **kw):
    from slimgpt.testing import tiny_checkpoint

    return tiny_checkpoint(folder, tiny, ratio, **kw)


def _empty_layers(folder):
    """A layer without heads and a layer without FFN channels, with output biases."""
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.loaders.tiny import byte_tokenizer, tiny_model

    m = tiny_model("tiny-hetero", layer_heads=[8, 0, 3], layer_kv_heads=[4, 0, 1],
                   layer_kv_map=[[0, 0, 1, 1, 2, 2, 3, 3], [], [0, 0, 0]], layer_intermediate=[96, 0, 33],
                   o_proj_bias=True, mlp_bias=True)
    return save_pretrained(m, folder, byte_tokenizer(), {})


class _Checkpoints(dict):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        self[name] = _CHECKPOINTS[name](self.root / name)
        return self[name]


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """Saved tiny slimgpt checkpoints by name (_CHECKPOINTS), shared by the export tests."""
    return _Checkpoints(tmp_path_factory.mktemp("ckpt"))
