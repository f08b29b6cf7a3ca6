"""model.device: the one place --device and --amp become a torch device and an autocast dtype."""
import pytest
import torch

from model.config import ConfigError
from model.device import AMP_MODES, autocast, select_amp, select_device


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
