"""Config loading: base + overlay, overrides, and one test per validation error."""

from __future__ import annotations

import textwrap

import pytest

from medseg.config import load_config, to_dict
from medseg.errors import ConfigError

BASE = """
data:
  channels:
    - name: CBF
      normalization: {name: zscore}
    - name: MTT
      normalization: {name: percentile_clip, lower: 1, upper: 99}
  labels: {0: background, 1: lesion}
  spacing: [1.0, 1.0, 2.0]
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_base_overlay_and_overrides(tmp_path):
    _write(tmp_path, "base.yaml", BASE)
    over = _write(tmp_path, "over.yaml", "base: base.yaml\nname: perfusion\ndata:\n  spacing: [2, 2, 4]\n")
    cfg = load_config(over, ["data.orientation=LPS", "data.resample_channels=true"])
    assert cfg.name == "perfusion"
    assert cfg.data.spacing == [2.0, 2.0, 4.0]
    assert cfg.data.orientation == "LPS" and cfg.data.resample_channels is True
    assert cfg.data.channel_names == ["CBF", "MTT"] and cfg.data.num_classes == 2
    assert to_dict(cfg)["data"]["channels"][1]["normalization"]["upper"] == 99


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.chanels=[]", "unknown key 'data.chanels'; valid keys of data: channels"),
        ("data.spacing=[1, 1]", "data.spacing: expected 3 positive values"),
        ("data.spacing=abc", "data.spacing: expected a list"),
        ("data.orientation=RAX", "data.orientation: 'RAX' is not three axis codes"),
        ("data.labels={1: lesion}", "label 0 (background) must be declared"),
        ("data.spatial_dims=4", "data.spatial_dims: 4 is not one of 2, 3"),
        ("data.resample_channels=maybe", "data.resample_channels: expected true or false"),
        ("data.channels=[{name: CT, normalization: {name: magic}}]", "magic"),
        ("data.channels=[{name: A}, {name: A}]", "duplicate channel names ['A']"),
        ("data.channels=[{name: CT, normalization: {name: ct_window, centre: 40}}]", "centre"),
        ("nonsense", "expected key.sub=value"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, override, message):
    path = _write(tmp_path, "c.yaml", BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert message in str(info.value)


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="data: missing required key"):
        load_config(_write(tmp_path, "a.yaml", "name: x\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "b.yaml", "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(_write(tmp_path, "loop.yaml", "base: loop.yaml\n"))


@pytest.mark.parametrize(
    "tag",
    ["!!python/object/apply:os.system", "!!python/object/new:subprocess.Popen", "!!python/name:os.system"],
)
def test_yaml_python_tags_are_refused_and_never_run(tmp_path, tag):
    """A config is data: a YAML tag that would construct a Python object is refused, naming the file, and its
    payload never runs (the canary file is never created); the same through an override on the command line."""
    canary = tmp_path / "canary"
    payload = f'{tag} [["touch", "{canary}"]]' if "Popen" in tag else f'{tag} ["touch {canary}"]'
    path = _write(tmp_path, "hostile.yaml", BASE + f"name: {payload}\n")
    with pytest.raises(ConfigError, match=r"hostile\.yaml: invalid YAML") as info:
        load_config(path)
    assert "python" in str(info.value)
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, "ok.yaml", BASE), [f"name={payload}"])
    assert not canary.exists()
