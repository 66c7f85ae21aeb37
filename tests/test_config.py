import pytest

from fedsim.core.checks import checked_config
from fedsim.core.config import Config, ConfigError, config_from_flat, load_toml, parse_overrides, parse_value


def test_defaults_are_valid_and_frozen():
    cfg = checked_config()
    assert cfg.run.clients == 50 and cfg.num_sampled == 10
    with pytest.raises(AttributeError):
        cfg.run.clients = 3  # type: ignore[misc]


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[run]\nrounds = 7\nseed = 3\n[channel]\nradius_m = 250\n")
    cfg = checked_config(load_toml(f), {"run.seed": 5}, parse_overrides(["channel.bandwidth_hz=1e6"]))
    assert cfg.run.rounds == 7 and cfg.run.seed == 5
    assert cfg.channel.radius_m == 250.0 and isinstance(cfg.channel.radius_m, float)
    assert cfg.channel.bandwidth_hz == 1e6


def test_flat_round_trip_and_toml():
    cfg = checked_config({"run.clients_per_round": 0.5, "run.clients": 8})
    assert cfg.num_sampled == 4
    assert config_from_flat(cfg.to_flat()) == cfg
    import tomllib

    again = tomllib.loads(cfg.to_toml())
    assert again["run"]["clients_per_round"] == 0.5


def test_parse_value_reads_toml_literals():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("rayleigh") == "rayleigh" and parse_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    "flat, fragment",
    [
        ({"run.clients": 0}, "run.clients=0: must be an integer in [1, 100000]"),
        ({"run.rounds": -2}, "run.rounds=-2"),
        ({"run.clients": 4, "run.clients_per_round": 5}, "run.clients_per_round=5: must be at most run.clients=4"),
        ({"run.clients_per_round": 1.5}, "fraction in (0, 1]"),
        ({"run.eval_every": 0}, "run.eval_every=0: must be an integer in [1, "),
        ({"run.method": "nope"}, "run.method='nope': must be one of"),
        ({"workload.name": "nope"}, "workload.name='nope': must be one of"),
        ({"workload.preset": "huge"}, "workload.preset='huge'"),
        ({"run.clinets": 3}, "unknown config key 'run.clinets'"),
        ({"foo.bar": 3}, "unknown config key 'foo.bar'"),
        ({"run.rounds": "ten"}, "run.rounds='ten': expected int"),
        ({"run.rounds": True}, "expected int"),
        ({"channel.bandwidth_hz": 0}, "channel.bandwidth_hz=0.0: must be a number in (0, 1e+12] Hz"),
        ({"channel.radius_m": float("nan")}, "channel.radius_m=nan"),
        ({"lora.value_bits": 8}, "lora.value_bits=8: must be 16 or 32"),
        ({"compute.device_flops_min": 3e12}, "compute.device_flops_min"),
    ],
)
def test_bad_values_name_key_value_and_allowed(flat, fragment):
    with pytest.raises(ConfigError) as e:
        checked_config(flat)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_bad_toml_and_missing_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[run\nrounds = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(f)
    with pytest.raises(ConfigError, match="file not found"):
        load_toml(tmp_path / "missing.toml")
    g = tmp_path / "flat.toml"
    g.write_text("rounds = 3\n")
    with pytest.raises(ConfigError, match="must be tables"):
        load_toml(g)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["run.rounds"])


def test_config_is_hashable_value_object():
    assert hash(Config()) == hash(Config())


def test_a_workload_preset_sets_its_defaults_under_every_layer(tmp_path):
    rc = {"workload.name": "reversal-curse"}
    assert checked_config().train.local_epochs == 1  # text-classify's presets set none
    tiny = checked_config(rc).train
    assert (tiny.local_epochs, tiny.batch_size, tiny.lr) == (20, 8, 3e-3)
    assert checked_config(rc, {"workload.preset": "from-scratch"}).train.local_epochs == 40
    f = tmp_path / "c.toml"
    f.write_text('[workload]\nname = "reversal-curse"\n[train]\nlocal_epochs = 1\n')
    from_file = checked_config(load_toml(f))
    assert from_file.train.local_epochs == 1 and from_file.train.batch_size == 8  # the file wins where it speaks
    assert checked_config(load_toml(f), parse_overrides(["train.local_epochs=7"])).train.local_epochs == 7
    assert checked_config(rc, parse_overrides(["train.lr=0.01"])).train.lr == 0.01
    # a resumed or carried configuration (every key given) keeps its own values
    flat = checked_config(rc, {"train.local_epochs": 2}).to_flat()
    assert config_from_flat(flat).train.local_epochs == 2


def test_a_preset_default_out_of_range_or_unknown_is_refused_in_one_line(monkeypatch):
    """A workload declares its presets' configuration defaults; the simulator checks them against the
    keys' own ranges when it reads them (a preset the workload lacks is refused when declared)."""
    import workloads
    from fedsim.core.config import preset_default_rows, preset_defaults
    from workloads.options import Declaration, Option, Range

    options = {"width": Option(8, Range(1, 64), "width")}
    with pytest.raises(ValueError, match="preset 'base' is not one of tiny"):
        Declaration(options, config_defaults={"base": {"train.local_epochs": 3}})
    cases = [
        ({"train.local_epochs": 5000}, r"train.local_epochs=5000: must be an integer in \[0, 1000\]"),
        ({"train.lr": 0.0}, "train.lr=0.0: must be a number in"),
        ({"train.epochs": 3}, "unknown config key 'train.epochs'"),
        (
            {"channel.radius_m": 100.0},
            r"channel.radius_m: a preset gives defaults only for train.\* and run.clients_per",
        ),
        ({"workload.partition": "random"}, "workload.partition='random': must be one of"),
    ]
    for values, message in cases:
        declared = Declaration(options, config_defaults={"tiny": values})
        monkeypatch.setattr(workloads, "declaration", lambda name, d=declared: d)
        with pytest.raises(ConfigError, match=f"^workload 'toy', preset 'tiny', declares a default {message}"):
            preset_defaults("toy", "tiny")
    ok = Declaration(options, {"tiny": {}, "base": {}}, config_defaults={"base": {"train.lr": 1}})
    monkeypatch.setattr(workloads, "declaration", lambda name: ok)
    assert preset_defaults("toy", "base") == {"train.lr": 1.0} and preset_defaults("toy", "tiny") == {}
    row = preset_default_rows("toy")[-1]
    assert row[:3] == ("train.lr", "tiny: 0.003, base: 1.0", "a number in (0, 10]")


def test_renamed_keys_are_read_under_their_new_names(tmp_path):
    from fedsim.core.config import RENAMED_KEYS, renamed_key_notes, toml_to_flat

    renamed_key_notes()  # forget what earlier tests read
    assert parse_overrides(["soft.rho=0.25", "tsfa.scheduler=fixed"]) == {"method.rho": 0.25, "run.scheduler": "fixed"}
    assert renamed_key_notes() == [
        "note: soft.rho is now method.rho (the old name still works)",
        "note: tsfa.scheduler is now run.scheduler (the old name still works)",
    ]
    assert renamed_key_notes() == []  # each note once
    # a results folder written before the rename builds the same configuration
    old = '[run]\nmethod = "soft"\n[soft]\nrho = 0.25\nlambda_orth = 0.3\n[tsfa]\nscheduler = "tsfa"\nv = 0.1\n'
    cfg = config_from_flat(toml_to_flat(old, "old config.toml"))
    new = {"run.method": "soft", "method.rho": 0.25, "method.lambda_orth": 0.3, "run.scheduler": "tsfa", "tsfa.v": 0.1}
    assert cfg == config_from_flat(new)
    assert cfg.method.rho == 0.25 and cfg.run.scheduler == "tsfa" and cfg.tsfa.v == 0.1
    assert not set(RENAMED_KEYS) & set(cfg.to_flat())  # written back under the new names only
    assert config_from_flat({"soft.lambda_orth": 0.5}).method.lambda_orth == 0.5  # Python callers too
    renamed_key_notes()


@pytest.mark.parametrize("layer", [["soft.rho=0.25", "method.rho=0.5"], ["tsfa.scheduler=fixed", "run.scheduler=tsfa"]])
def test_both_names_of_a_renamed_key_is_an_error(layer):
    with pytest.raises(
        ConfigError, match=r"^(soft\.rho|tsfa\.scheduler): --set also gives (method\.rho|run\.scheduler)"
    ):
        parse_overrides(layer)
