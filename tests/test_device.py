"""model.device: the one place --device and --amp become a torch device and an autocast dtype."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import ConfigError
from model.device import AMP_MODES, autocast, select_amp, select_device

REPO = Path(__file__).resolve().parents[1]


def test_auto_and_cpu_devices():
    assert select_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device(None).type == select_device("auto").type == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"train.device='cuda:1' but no CUDA device is available"):
        select_device("cuda:1", what="train.device")


def test_unknown_device_names_the_flag():
    with pytest.raises(ConfigError, match=r"--device='gpu0': expected auto"):
        select_device("gpu0")


def test_amp_modes_on_cpu():
    cpu = torch.device("cpu")
    assert AMP_MODES == ("auto", "off", "bf16", "fp16")
    assert select_amp("auto", cpu) == (None, False) and select_amp("off", cpu) == (None, False)
    assert select_amp("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        select_amp("fp16", cpu)
    with pytest.raises(ConfigError, match=r"--amp='fp8': expected one of auto, off, bf16, fp16"):
        select_amp("fp8", cpu)


def test_autocast_runs_bf16_on_cpu_and_nothing_for_float32():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (a @ a).dtype == torch.float32


@pytest.mark.gpu
def test_fp16_on_cuda_needs_a_scaler():
    assert select_amp("fp16", torch.device("cuda")) == (torch.float16, True)


FAULTS_SCRIPT = """
import resource, torch, timm
from model.device import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
x = torch.randn(4, 3, 224, 224)
with torch.inference_mode():
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x)
    net(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_each_forward_pass():
    """Freed activations stay with the process: with glibc's defaults two CPU forward passes of Lite0 fault
    their activations in again page by page (tens of thousands of faults); with the tuning the heap keeps
    them, and LAANET_MALLOC_TUNING=0 turns it off."""
    def faults(tuning: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, check=True,
                             env={**os.environ, "LAANET_MALLOC_TUNING": tuning}, cwd=REPO).stdout.split()
        return out[0], int(out[1])
    applied_on, on = faults("1")
    applied_off, off = faults("0")
    assert (applied_on, applied_off) == ("True", "False")
    assert off > 10_000 and on < off / 10, (on, off)
