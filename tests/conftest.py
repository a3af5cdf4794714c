import os
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A small third-party distribution that registers backends through the qbench.backends group."""
    site = tmp_path / "site"
    package = site / "qbench_fakeplugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent('''
        import os, signal, time
        import torch
        from qbench.backend import Backend
        from qbench.backends.bf16 import Bf16Backend

        class FakeOk(Bf16Backend):
            name = "fake-ok"
            description = "bf16 under another name, from a plugin"

        class FakeSegv(Backend):
            name = "fake-segv"
            def load(self, spec, options):
                os.kill(os.getpid(), signal.SIGSEGV)

        class FakeHang(Backend):
            name = "fake-hang"
            def load(self, spec, options):
                time.sleep(3600)

        class FakeOom(Backend):
            name = "fake-oom"
            def load(self, spec, options):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        class FakeWrong(Bf16Backend):
            """Quantises to garbage: its kernel multiplies by a random matrix."""
            name = "fake-wrong"
            bits = 4
            def quantize_linear(self, linear, group_size):
                from qbench.quantlinear import QuantLinear
                class Wrong(QuantLinear):
                    def __init__(self, linear):
                        super().__init__(linear.in_features, linear.out_features, linear.bias, group_size)
                        self.weight = torch.nn.Parameter(linear.weight.detach(), requires_grad=False)
                        self.noise = torch.randn_like(self.weight) * self.weight.std()
                    def stored_tensors(self):
                        return [self.weight]
                    def dequantize(self):
                        return self.weight.float()
                    def kernel_forward(self, x):
                        return torch.nn.functional.linear(x, self.noise.to(x.dtype), self.bias)
                return Wrong(linear)
            def linear_bytes(self, in_features, out_features, group_size):
                return in_features * out_features * 2
    ''')
    )
    info = site / "qbench_fakeplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qbench-fakeplugin\nVersion: 0.1\n")
    names = {
        "fake-ok": "FakeOk",
        "fake-segv": "FakeSegv",
        "fake-hang": "FakeHang",
        "fake-oom": "FakeOom",
        "fake-wrong": "FakeWrong",
    }
    (info / "entry_points.txt").write_text(
        "[qbench.backends]\n" + "".join(f"{k} = qbench_fakeplugin:{v}\n" for k, v in names.items())
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    yield site
    sys.modules.pop("qbench_fakeplugin", None)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in a fresh directory, so results/ of the checkout is never written."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parent.parent
