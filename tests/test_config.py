"""TrainConfig.validate: settings of the wrong type fail naming the setting; numpy scalars are fine."""
import json

import numpy as np
import pytest
import torch

from con2.config import TrainConfig
from con2.model import Con2Model

INTS = ["epochs", "batch_size", "seed", "split_seed", "width", "checkpoint_every", "image_size", "center_crop",
        "resolution", "n_train", "max_train_samples"]
NUMBERS = ["lr", "weight_decay", "temperature", "test_fraction", "val_fraction"]


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("value", ["8", 2.5, 16.0, True, None])
def test_integer_settings_must_be_integers(name, value):
    if value is None and name in ("image_size", "center_crop", "resolution", "n_train", "max_train_samples"):
        TrainConfig(**{name: value}).validate()  # these may be unset
        return
    flag = "--" + name.replace("_", "-")
    with pytest.raises(TypeError, match=f"{flag} must be an integer, got {value!r}"):
        TrainConfig(**{name: value}).validate()


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("value", ["0.1", True, [0.1]])
def test_number_settings_must_be_numbers(name, value):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(TypeError, match=f"{flag} must be a number"):
        TrainConfig(**{name: value}).validate()


def test_other_types_fail_naming_the_setting():
    for kw, match in [(dict(amp="no"), "--amp must be True or False"), (dict(compile=1), "--compile"),
                      (dict(context=["invert"]), "--context must be a string"),
                      (dict(normal_class="83"), "--normal-class must be a list of class names, got the string '83'")]:
        with pytest.raises(TypeError, match=match):
            TrainConfig(**kw).validate()


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    cfg = TrainConfig(epochs=np.int64(3), batch_size=np.int32(16), width=np.int16(8), image_size=np.int64(16),
                      lr=np.float32(2e-3), temperature=np.float64(0.1), amp=np.bool_(False)).validate()
    d = json.loads(cfg.to_json())  # config.json is written from these
    assert (d["epochs"], d["batch_size"], d["width"], d["image_size"], d["amp"]) == (3, 16, 8, 16, False)
    assert type(cfg.epochs) is int and type(cfg.lr) is float and d["lr"] == pytest.approx(2e-3)
    TrainConfig(lr=1, weight_decay=0, val_fraction=0).validate()  # ints are numbers


@pytest.mark.parametrize("width", [1, 3, 65])
def test_any_width_from_1_builds_a_working_encoder(width):
    TrainConfig(width=width).validate()
    model = Con2Model(in_channels=1, image_size=8, width=width)
    assert model.encode(torch.zeros(2, 1, 8, 8)).shape == (2, 8 * width)
    with pytest.raises(ValueError, match="--width must be >= 1"):
        TrainConfig(width=0).validate()


def test_a_narrow_encoder_is_initialised_as_the_width_64_one():
    """NarrowResNet rebuilt its layers after ResNet.__init__ had initialised them, so the narrow
    test / demo models had PyTorch's default init, not torchvision's kaiming (fan_out) init."""
    import math

    torch.manual_seed(0)
    for width in (16, 64):
        conv = Con2Model(in_channels=1, image_size=8, width=width).encoder.layer1[0].conv1.weight
        expected = math.sqrt(2 / (width * 9))  # kaiming normal, fan_out = out channels x 3 x 3
        assert abs(conv.std().item() / expected - 1) < 0.1, width


def test_the_temperature_range_is_the_loss_kernels():
    """A temperature the loss refuses was accepted and failed at the first training step."""
    from con2.config import FLOAT32_MAX, MIN_TEMPERATURE
    from con2.ops.reference import TEMPERATURE_RANGE

    assert (MIN_TEMPERATURE, FLOAT32_MAX) == TEMPERATURE_RANGE
    with pytest.raises(ValueError, match="--temperature must be >= 1e-06"):
        TrainConfig(temperature=1e-7).validate()
    with pytest.raises(ValueError, match=r"--seed and --split-seed must be in \[0, 2\*\*63\)"):
        TrainConfig(seed=2**64).validate()  # failed inside torch.manual_seed after loading the data


def test_an_lr_whose_adamw_step_overflows_float32_is_refused():
    """--lr 1e38 passed and AdamW's first step failed with torch's "cannot be converted to type float
    without overflow", naming no option."""
    with pytest.raises(ValueError, match="--lr must be at most 1e37"):
        TrainConfig(lr=1.1e37).validate()
    TrainConfig(lr=1e37).validate()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1e37)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()  # the largest lr accepted still steps
