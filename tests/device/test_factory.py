"""``[model] factory``: a user's model is checked (chain, classes, import) and refused
at ``fogsim validate`` with exit 2 naming the field, the value and the layer."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.device.factory import FactoryError, checked, counted_macs, macs_per_sample
from fogsim.device.models import FogNet
from tests.conftest import TINY

runner = CliRunner()
MOD = "tests.example_models"

FACTORY_TINY = TINY.replace('arch = "mlp"\nhidden = [64, 32]', f'factory = "{MOD}:lenet5"')


@pytest.fixture
def factory_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "factory.toml"
    path.write_text(FACTORY_TINY)
    return path


def test_the_examples_are_chains() -> None:
    lenet = checked(f"{MOD}:lenet5", (1, 28, 28), 10)
    assert lenet.widths == (6, 16, 120, 84)
    assert lenet.num_params == 61_706
    # the flatten reads 5x5 pixels per channel of the second conv
    assert lenet.layout.roles["7.weight"].span == 25
    resnet = checked(f"{MOD}:resnet_like", (3, 32, 32), 100)
    assert resnet.widths == (8, 16, 16, 32)
    assert resnet.layout.roles["1.running_var"].out == 0  # batch norm follows its conv


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        (f"{MOD}:with_skip", ["skip connection", "add", "in layer '1' (_Residual)"]),
        (f"{MOD}:with_layernorm", ["layer '2'", "LayerNorm", "not supported"]),
        (f"{MOD}:wrong_classes", ["(3,)", "(10,) logits"]),
        (f"{MOD}:not_a_module", ["returned a str"]),
        (f"{MOD}:NOT_CALLABLE", ["no function 'NOT_CALLABLE'"]),
        ("tests.no_such_module:make", ["cannot import 'tests.no_such_module'"]),
        # what the memory replay would under-count: a padded copy of the input
        (f"{MOD}:reflect_padded", ["layer '0'", "padding_mode 'reflect'", "'zeros'"]),
        (f"{MOD}:even_same_padded", ["layer '0'", "padding='same'", "(4, 4)", "odd kernel"]),
        # runs dense, not narrowed; an op with no memory rule
        (f"{MOD}:fixed_view", ["does not run narrowed", "torch.flatten(x, 1)"]),
        (f"{MOD}:reshaped", ["no memory rule", "reshape"]),
    ],
)
def test_unusable_factories_are_refused(ref: str, says: list[str]) -> None:
    with pytest.raises(FactoryError) as e:
        checked(ref, (1, 28, 28), 10)
    assert all(s in str(e.value) for s in says), str(e.value)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (f"model.factory='{MOD}:with_skip'", ["model.factory", "with_skip", "skip connection"]),
        (f"model.factory='{MOD}:with_layernorm'", ["model.factory", "LayerNorm"]),
        ("model.factory='tests.nope:make'", ["model.factory", "cannot import"]),
        (f"model.factory='{MOD}:fixed_view'", ["model.factory", "does not run narrowed"]),
        (f"model.factory='{MOD}:reshaped'", ["model.factory", "no memory rule"]),
        ("model.factory='lenet5'", ["model.factory", "should match pattern"]),
        ("model.hidden=[8]", ["model", "factory =", "hidden", "give one of them"]),
    ],
)
def test_validate_refuses_with_exit_2(factory_scenario: Path, override: str, says) -> None:
    result = runner.invoke(app, ["validate", str(factory_scenario), "--set", override])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "factory.toml" in result.output
    assert all(s in result.output for s in says), result.output


def test_a_fleet_that_cannot_hold_the_factory_model_is_refused(factory_scenario: Path) -> None:
    sets = ["--set", "fleet.classes.0.memory='16KiB'", "--set", "fleet.classes.1.memory='16KiB'"]
    result = runner.invoke(app, ["validate", str(factory_scenario), *sets])
    assert result.exit_code == 2, result.output
    assert "the smallest model (one neuron per layer)" in result.output, result.output


def test_a_resolved_factory_scenario_reads_back(factory_scenario: Path) -> None:
    """scenario.json (resume) and the clients' spec list every field, the FogNet ones
    at their defaults: that is not a conflict with factory."""
    from fogsim.scenario import Scenario, load_scenario

    sc = load_scenario(factory_scenario)
    again = Scenario.model_validate(sc.model_dump(mode="json"))
    assert again.model.factory == f"{MOD}:lenet5"


def test_multiply_accumulates_of_a_cnn_by_hand() -> None:
    """A 5x5 same-padding conv costs c_in * c_out * 25 per output pixel, at the size of
    its input (the 2x2 pool comes after it); a Linear in * out. The FogNet formula and
    the hooks' count (every other model's) agree with the hand; the count leaves the
    model's training mode as it was."""
    net = FogNet((4, 8), (32,))
    by_hand = 1 * 4 * 25 * 28 * 28 + 4 * 8 * 25 * 14 * 14 + 8 * 7 * 7 * 32 + 32 * 10
    assert macs_per_sample(net, (1, 28, 28)) == by_hand == 248_064
    assert counted_macs(net, (1, 28, 28)) == by_hand
    assert net.training
