"""The contract every registered channel component meets; registering an entry enrols it here.

Shape, finite values, determinism for a seed, a different draw for another seed (random models),
picklable (Ray ships them), parameters named after configuration keys, and buildable from the
default configuration.
"""

import dataclasses
import pickle

import numpy as np
import pytest

from channels import REGISTRIES, build_component, get_component
from channels.fading import GaussMarkov

K = 64

DETERMINISTIC = {
    ("drop", "csv"),
    ("shadowing", "none"),
    ("fading", "none"),
    ("device_speed", "fixed"),
    ("device_speed", "csv"),
}
"""Entries whose draw does not use the generator."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    rng = np.random.default_rng(0)
    pos = d / "pos.csv"
    xy = rng.uniform(-300, 300, (K, 2))
    pos.write_text("client_id,x_m,y_m\n" + "".join(f"{i},{x},{y}\n" for i, (x, y) in enumerate(xy)))
    speeds = d / "speeds.csv"
    speeds.write_text("client_id,device_flops\n" + "".join(f"{i},{1e12 * (1 + i)}\n" for i in range(K)))
    return {"positions_csv": str(pos), "device_speed_csv": str(speeds)}


def make(kind, name, files):
    cls = get_component(kind, name)
    kwargs = {f.name: files[f.name] for f in dataclasses.fields(cls) if f.name in files}
    return cls(**kwargs)


def draw(kind, comp, seed):
    rng = np.random.default_rng(seed)
    if kind == "pathloss":
        d = rng.uniform(10.0, 2000.0, K)
        los = rng.random(K) < comp.los_probability(d)
        return comp.loss_db(d, los)
    return comp.sample(rng, K)


ENTRIES = [(kind, name) for kind, reg in REGISTRIES.items() for name in reg]


@pytest.mark.parametrize("kind, name", ENTRIES, ids=[f"{k}-{n}" for k, n in ENTRIES])
def test_component_contract(kind, name, files):
    comp = make(kind, name, files)
    assert dataclasses.is_dataclass(comp)
    assert type(comp).__dataclass_params__.frozen, "components are immutable"
    a = draw(kind, comp, 1)
    expected_shape = (K, 2) if kind in ("drop", "mobility") else (K,)
    assert a.shape == expected_shape
    assert np.all(np.isfinite(a))
    assert np.array_equal(a, draw(kind, comp, 1)), "not deterministic for a seed"
    if (kind, name) not in DETERMINISTIC:
        assert not np.array_equal(a, draw(kind, comp, 2)), "same draw for another seed"
    again = pickle.loads(pickle.dumps(comp))
    assert again == comp
    assert np.array_equal(draw(kind, again, 1), a)


@pytest.mark.parametrize("kind, name", ENTRIES, ids=[f"{k}-{n}" for k, n in ENTRIES])
def test_parameters_are_configuration_keys_and_build_from_defaults(kind, name):
    from fedsim.core.config import SECTIONS
    from fedsim.core.wireless import SECTION_OF_KIND

    section = SECTIONS[SECTION_OF_KIND[kind]]
    keys = {f.name: f for f in dataclasses.fields(section)}
    assert kind in keys and name in keys[kind].metadata["allowed"]
    cls = get_component(kind, name)
    for f in dataclasses.fields(cls):
        assert f.name in keys, f"{cls.__name__}.{f.name} is not a {SECTION_OF_KIND[kind]} key"
        assert f.default == keys[f.name].default, f"{f.name}: component and config defaults differ"
        assert cls.__doc__, "every component documents its model"
    built = build_component(kind, name, section())  # the section's defaults
    assert isinstance(built, cls)


@pytest.mark.parametrize("kind", ["mobility", "shadowing"])
def test_time_correlated_components_keep_shape_and_are_deterministic(kind, files):
    for name in REGISTRIES[kind]:
        comp = make(kind, name, files)
        start = np.random.default_rng(0).uniform(-200, 200, (K, 2)) if kind == "mobility" else K
        s0 = comp.initial(np.random.default_rng(1), start)
        s1 = comp.step(np.random.default_rng(2), s0)
        assert s1.shape == s0.shape and np.all(np.isfinite(s1))
        assert np.array_equal(s1, comp.step(np.random.default_rng(2), s0))
    gm = GaussMarkov(0.5)
    z0 = gm.initial(np.random.default_rng(1), K)
    assert gm.step(np.random.default_rng(2), z0).shape == (K,)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown fading model 'nope': known are rayleigh, rician, nakagami, none"):
        get_component("fading", "nope")
