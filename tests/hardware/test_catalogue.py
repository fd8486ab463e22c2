"""The shipped device catalogue: it loads, every figure has a source, the figures are
plausible, and a device class gets (and overrides) them."""

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.hardware.catalogue import DEVICE_FIGURES, RADIO_FIGURES, catalogue, class_figures
from fogsim.scenario import DeviceClass

KINDS_NEEDED = {"microcontroller", "single-board computer", "edge accelerator", "phone", "cloudlet"}
RADIOS_NEEDED = {"ble", "lora", "nb-iot", "lte-m", "wifi", "ethernet", "5g"}


def test_catalogue_loads_and_every_entry_says_where_each_figure_comes_from() -> None:
    cat = catalogue()
    assert KINDS_NEEDED <= {d.kind for d in cat.devices.values()}
    assert RADIOS_NEEDED <= set(cat.radios)
    for name, entry in [*cat.devices.items(), *cat.radios.items()]:
        notes = entry.source.model_dump()
        assert notes and all(len(n) > 20 for n in notes.values()), name
    for name, d in cat.devices.items():
        assert d.radio in cat.radios, name
        assert set(d.source.model_dump()) == {"memory", "flops", "power"}


def test_figures_are_plausible_orders_of_magnitude() -> None:
    """Not precise, but in the right decade: a slip of a unit (W for mW, kbit/s for
    Mbit/s) would break these."""
    cat = catalogue()
    for name, d in cat.devices.items():
        assert d.active_w > d.idle_w >= 0, name
        assert 1e6 <= d.flops <= 1e13, name
        assert 64 << 10 <= d.memory <= 256 << 30, name
    mcu = [d for d in cat.devices.values() if d.kind == "microcontroller"]
    sbc = [d for d in cat.devices.values() if d.kind == "single-board computer"]
    assert max(d.memory for d in mcu) < min(d.memory for d in sbc)
    assert max(d.active_w for d in mcu) < 1 < min(d.active_w for d in sbc)
    r = cat.radios
    assert r["lora"].up_mbps < r["nb-iot"].up_mbps < r["wifi"].up_mbps < r["ethernet"].up_mbps
    assert r["lora"].tx_j_per_byte > 100 * r["wifi"].tx_j_per_byte > r["ethernet"].tx_j_per_byte


def test_a_class_gets_its_device_and_radio_figures_and_may_override_them() -> None:
    cat = catalogue()
    pi = DeviceClass(name="gw", count=1, device="raspberry-pi-4")
    for f in DEVICE_FIGURES:
        assert getattr(pi, f) == getattr(cat.devices["raspberry-pi-4"], f)
    assert pi.radio == "wifi"  # the device's own radio by default
    for f in RADIO_FIGURES:
        assert getattr(pi, f) == getattr(cat.radios["wifi"], f)
    own = DeviceClass(
        name="s", count=1, device="esp32-s3", radio="lora", memory="1MiB", up_mbps=0.001
    )
    assert own.memory == 1 << 20 and own.up_mbps == 0.001  # overridden
    assert own.down_mbps == cat.radios["lora"].down_mbps and own.flops == 5e7  # not
    plain = DeviceClass(name="x", count=1, memory="1MiB")
    assert plain.active_w is None and plain.flops == 1e9 and plain.latency_ms == 0


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"device": "raspbery-pi-4"},
            ["device:", "'raspbery-pi-4'", "did you mean 'raspberry-pi-4'"],
        ),
        ({"device": "esp32-s3", "radio": "wlan"}, ["radio:", "'wlan'", "allowed: ble, lora"]),
    ],
)
def test_unknown_names_are_refused_with_the_allowed_ones(fields, words) -> None:
    with pytest.raises(ValueError) as info:
        class_figures({"name": "x", **fields})
    for word in words:
        assert word in str(info.value), str(info.value)


def test_fogsim_devices_prints_the_catalogue() -> None:
    result = CliRunner().invoke(app, ["devices"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in [*catalogue().devices, *catalogue().radios]:
        assert name in result.output
    assert "approximate" in result.output and "--sources" in result.output
    result = CliRunner().invoke(app, ["devices", "--sources"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "SX1262 datasheet" in result.output
