"""Weights load from safetensors only: pickles are refused unless the user says they trust them."""

import os
import shutil

import pytest
import torch

from latentgen.cli import main as cli
from tests.tiny_models import make_tiny_pipeline


@pytest.fixture
def pickled_model(tmp_path):
    """A model folder whose UNet weights are a pickle (.bin) instead of safetensors."""
    from diffusers import UNet2DConditionModel

    folder = make_tiny_pipeline(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"))
    shutil.rmtree(os.path.join(folder, "unet"))
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=False)
    assert os.path.isfile(os.path.join(folder, "unet", "diffusion_pytorch_model.bin"))
    return folder


def test_pickle_weights_are_refused(pickled_model):
    from latentgen import LatentGenPipeline

    with pytest.raises(FileNotFoundError, match=r"pickle weights in unet/.*trust_pickle=True"):
        LatentGenPipeline.from_pretrained(pickled_model)


def test_pickle_weights_load_when_trusted(pickled_model):
    from latentgen import LatentGenPipeline

    pipe = LatentGenPipeline.from_pretrained(pickled_model, trust_pickle=True)
    img = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert img.shape == (1, 16, 16, 3)


def test_cli_refuses_pickle_and_names_the_flag(pickled_model, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert cli(["generate", "--model", pickled_model, "--prompt", "a red circle", "--steps", "2", "--out", out]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not os.path.exists(out)
    assert cli(["generate", "--model", pickled_model, "--prompt", "a red circle", "--steps", "2", "--out", out,
                "--trust-pickle"]) == 0
    assert os.path.isfile(out)


def test_single_pickle_checkpoint_is_refused(tmp_path):
    from latentgen import LatentGenPipeline

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even a pickle")
    with pytest.raises(ValueError, match="single pickle checkpoint"):
        LatentGenPipeline.from_pretrained(str(ckpt))


def test_pyproject_requires_a_torch_without_the_weights_only_bypass():
    """torch < 2.6 lets a crafted file run code even under torch.load(weights_only=True) (CVE-2025-32434)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        deps = [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]
    torch_req = next(r for r in deps if r.name == "torch")
    assert torch_req.specifier, "torch must have a lower bound"
    assert not torch_req.specifier.contains("2.5.1"), f"{torch_req} allows torch 2.5"
    assert torch_req.specifier.contains("2.6.0")


def _save_tiny_lora(folder, safe: bool) -> None:
    """Real LoRA weights for the tiny UNet (the fine-tuner's adapters), as safetensors or a pickle (.bin)."""
    from latentgen import LatentGenPipeline
    from latentgen.lora import UNET_LORA_TARGETS, add_lora, lora_layers
    from tests.tiny_models import make_tiny_components

    unet = make_tiny_components()["unet"]
    add_lora(unet, rank=2, alpha=None, targets=UNET_LORA_TARGETS)
    LatentGenPipeline.save_lora_weights(str(folder), unet_lora_layers=lora_layers(unet),
                                        safe_serialization=safe)


def test_lora_pickle_weights_are_refused_and_safetensors_load(tmp_path):
    from latentgen import LatentGenPipeline
    from tests.tiny_models import make_tiny_components

    pickled, safe = tmp_path / "pickled", tmp_path / "safe"
    _save_tiny_lora(pickled, safe=False)
    _save_tiny_lora(safe, safe=True)
    assert os.listdir(pickled) == ["pytorch_lora_weights.bin"]
    pipe = LatentGenPipeline(**make_tiny_components())
    with pytest.raises(ValueError, match=r"holds only pickle weights \(pytorch_lora_weights.bin\).*trust_pickle=True"):
        pipe.load_lora_weights(str(pickled))
    with pytest.raises(ValueError, match="are a pickle file"):
        pipe.load_lora_weights(str(pickled / "pytorch_lora_weights.bin"))
    with pytest.raises(ValueError, match="are a pickle file"):
        pipe.load_lora_weights(str(pickled), weight_name="pytorch_lora_weights.bin")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        pipe.load_lora_weights("someone/some-lora")
    assert pipe.get_list_adapters() == {}, "nothing was loaded from the refused weights"
    pipe.load_lora_weights(str(safe), adapter_name="safe")
    pipe.load_lora_weights(str(pickled), adapter_name="trusted", trust_pickle=True)
    assert set(pipe.get_list_adapters()["unet"]) == {"safe", "trusted"}
