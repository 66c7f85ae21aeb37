"""rainbow-padding: the task's program check, the padding schemes, the option checks (one-line
config errors, exit 2) and the evaluation metrics on hand-made samples (no training here)."""

import numpy as np
import pytest
import torch

from fedsim.core.checks import checked_config
from fedsim.errors import ConfigError
from tests.helpers.runs import run_fedsim
from tests.helpers.workloads import small_spec
from workloads import diffusion_lm as dlm
from workloads import rainbow_padding as rp


def test_successor_maps_make_a_strongly_connected_out_degree_two_graph():
    f0, f1 = rp.MAPS
    assert sorted(f0) == list(range(16)) and sorted(f1) == list(range(16))
    assert np.all(f0 != f1) and np.all(f1 != np.arange(16))
    assert (rp.DIST >= 0).all() and (np.diag(rp.DIST) == 0).all()
    # distance 1 exactly for the two successors
    for x in range(16):
        assert set(np.flatnonzero(rp.DIST[x] == 1)) == {f0[x], f1[x]}


def test_generated_answers_are_valid_and_first_hit_walks():
    rows = rp.generate_walks(500, np.random.default_rng(0))
    lengths = np.array(rows["length"])
    assert lengths.min() >= rp.MIN_RESPONSE and lengths.max() <= rp.MAX_RESPONSE
    assert lengths.std() > 4  # the content decides the length: a broad spread, about 5 to 30
    for s, t, walk, n, shortest in zip(
        rows["start"], rows["target"], rows["walk"], rows["length"], rows["min_length"], strict=True
    ):
        canvas = rp.pad_canvas(rp.response_tokens(walk), 32, "eos")
        assert rp.is_valid(canvas, s, t) and rp.answer_length(canvas) == n
        assert walk.count(t) == 1 and walk[-1] == t and shortest <= n
        assert shortest == rp.DIST[s, t] + 2


def test_program_check_rejects_what_it_must():
    rows = rp.generate_walks(50, np.random.default_rng(1))
    s, t, walk = rows["start"][0], rows["target"][0], rows["walk"][0]
    good = rp.response_tokens(walk)
    assert rp.is_valid([*good, rp.EOS], s, t)
    assert not rp.is_valid(good, s, t)  # no <eos>
    assert not rp.is_valid([*good[:-2], rp.STOP_ID, rp.EOS], s, t)  # stopped before the target
    assert not rp.is_valid([rp.SYM0 + (s + 1) % 16, *good[1:], rp.EOS], s, t)  # wrong start
    illegal = [x for x in range(16) if x not in rp.MAPS[:, walk[0]]][0]
    assert not rp.is_valid([good[0], rp.SYM0 + illegal, *good[2:], rp.EOS], s, t)  # illegal transition
    assert not rp.is_valid([*good[:-1], rp.EOS], s, t)  # no stop symbol
    assert not rp.is_valid([rp.EOS, *good], s, t)  # empty answer
    # a truncated answer is shorter than the shortest valid one and can never pass
    for cut in range(rp.shortest_valid_length(s, t) - 1):
        assert not rp.is_valid([*good[:cut], rp.STOP_ID, rp.EOS], s, t)


@pytest.mark.parametrize(
    ("padding", "k", "tail"),
    [
        ("eos", 7, ["<eos>"] * 6),
        ("single", 7, ["<eos>", *["<pad>"] * 5]),
        ("rainbow", 3, ["<eos>", "<pad0>", "<pad1>", "<pad2>", "<pad0>", "<pad1>"]),
        ("rainbow", 1, ["<eos>", *["<pad0>"] * 5]),
    ],
)
def test_padding_schemes(padding, k, tail):
    canvas = rp.pad_canvas([rp.ID["a"], rp.STOP_ID], 8, padding, k)
    assert [rp.VOCAB[i] for i in canvas] == ["a", ".", *tail]
    with pytest.raises(ValueError):
        rp.pad_canvas([rp.ID["a"]] * 8, 8, padding, k)


def test_collate_and_pretraining_padding():
    wl = rp.RainbowPadding(small_spec(options="padding=single"))
    train, _ = wl.build_data()
    batch = wl.collate(train[:5])
    ids, response = batch["input_ids"], batch["response"]
    assert ids.shape[1] == rp.PROMPT_LEN + wl.canvas_for(train[:5]) and ids.shape[1] - rp.PROMPT_LEN in (32, 48, 64)
    assert not response[:, : rp.PROMPT_LEN].any() and response[:, rp.PROMPT_LEN :].all()
    assert (ids == rp.PAD).any() and not ((ids >= rp.PAD0) & (ids < rp.PAD0 + 16)).any()
    base_batch = wl.collate(train[:5], padding="eos")
    assert not (base_batch["input_ids"] == rp.PAD).any()
    assert {wl.canvas_for(train[i : i + 4]) for i in range(0, 60, 4)} == {32, 48, 64}


def test_natural_split_gives_clients_their_own_start_symbols():
    wl = rp.RainbowPadding(small_spec(num_clients=4, samples_per_client=30, partition="natural"))
    train, test = wl.build_data()
    parts = wl.partition(train)
    starts = [set(p["start"]) for p in parts]
    assert all(s == {x for x in range(16) if x % 4 == k} for k, s in enumerate(starts))
    assert len(set(test["start"])) > 8


def test_options_and_payload():
    p = rp.RainbowPadding.resolve_params("tiny", "padding=eos, pad_tokens=3, eval_lengths=32 64")
    assert p["padding"] == "eos" and p["pad_tokens"] == 3 and rp.parse_lengths(p["eval_lengths"]) == [32, 64]
    # the run's padding does not change the pretrained base (it is always pretrained with eos)
    a = rp.RainbowPadding(small_spec(options="padding=eos")).pretrain_payload()
    b = rp.RainbowPadding(small_spec(options="padding=rainbow, pad_tokens=3")).pretrain_payload()
    c = rp.RainbowPadding(small_spec(options="pretrain_steps=5")).pretrain_payload()
    assert a == b and a != c


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("padding=zebra", "padding='zebra': must be one of eos, single, rainbow"),
        ("pad_tokens=0", "pad_tokens=0: must be an integer in"),
        ("pad_tokens=17", "pad_tokens=17"),
        ("eval_lengths=16 64", "eval_lengths='16 64': must be a string of 1 to 8 items"),
        ("eval_lengths=abc", "eval_lengths='abc': must be a string"),
        ("canvas_min=20", "canvas_min=20: must be an integer in"),
        ("canvas_max=40, canvas_min=48", "canvas_max=40: must be at least canvas_min=48"),
        ("eval_steps=24", "eval_steps=24: must be 0"),
        ("d_model=60", "d_model=60: must be a multiple of num_heads"),
        ("positions=alibi", "positions='alibi': must be one of rotary, learned"),
        ("eval_temperature=-1", "eval_temperature=-1.0: must be a number in"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as e:
        checked_config({"workload.name": "rainbow-padding", "workload.options": options})
    assert "\n" not in str(e.value) and str(e.value).startswith("workload.")


def test_bad_option_exits_2_before_anything_runs(tmp_path):
    proc = run_fedsim(
        [
            "run",
            "--workload",
            "rainbow-padding",
            "--set",
            "workload.options=pad_tokens=0",
            "--out",
            str(tmp_path / "o"),
        ],
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "pad_tokens=0" in proc.stderr and not (tmp_path / "o").exists()


def test_answer_metrics_on_hand_made_samples():
    rows = rp.generate_walks(2, np.random.default_rng(3))
    g = 32
    canvases = [
        rp.pad_canvas(rp.response_tokens(rows["walk"][0]), g, "rainbow", 7),  # the reference answer
        [rp.SYM0 + rows["start"][1], rp.EOS, *[rp.EOS] * (g - 2)],  # terminated after one token
    ]
    tokens = torch.tensor(
        [rp.prompt_tokens(s, t) + c for s, t, c in zip(rows["start"], rows["target"], canvases, strict=True)]
    )
    step = torch.arange(g).repeat(2, 1)  # left to right, one token per step
    step[1] = torch.arange(g).flip(0)  # right to left: the first half of steps commits eos only
    result = dlm.SampleResult(tokens=tokens, nfe=torch.full((2,), g), step=step, num_steps=g)
    m = rp.RainbowPadding.answer_metrics(result, rows, data_mean_length=10.0)
    assert m["validity"] == 0.5
    assert m["length_ratio"] == pytest.approx((rows["length"][0] + 1) / 2 / 10.0)
    assert m["early_termination"] == 0.5
    n0 = rows["length"][0]
    first = 16  # steps 0..15: sample 0 positions 0..15, sample 1 positions 16..31 (all eos)
    pads0 = max(0, first - n0)  # sample 0's <eos> and rainbow pads among its first 16 positions
    assert m["pad_first_half"] == pytest.approx((pads0 + 16) / 32)
    assert m["nfe"] == g
