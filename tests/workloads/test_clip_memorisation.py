"""clip-memorisation: renderer, tokenizer padding, interventions, data and option errors (no pretraining)."""

import numpy as np
import pytest
import torch

from fedsim.errors import ConfigError
from tests.helpers.runs import run_fedsim
from tests.helpers.workloads import small_spec
from workloads import clip_memorisation as cm

L = 12


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    t = cm.TextTower(len(cm.VOCAB), L, dim=16, layers=2, heads=2, embed_dim=16)
    t.eval()
    return t


def test_caption_round_trip_and_vocabulary():
    texts = [cm.caption_text(i) for i in range(cm.NUM_CAPTIONS)]
    assert len(set(texts)) == cm.NUM_CAPTIONS == 64
    assert all(cm.caption_index(t) == i for i, t in enumerate(texts))
    assert cm.caption_text(cm.caption_index("a bright large cross at top")) == "a bright large cross at top"


def test_render_follows_the_attributes():
    idx = {t: cm.caption_index(t) for t in ("a bright small circle at left", "a bright small circle at right")}
    idx["large"] = cm.caption_index("a bright large circle at left")
    idx["dim"] = cm.caption_index("a dim small circle at left")
    caps = np.array(list(idx.values()))
    img = cm.render(caps, np.zeros((len(caps), 4)), 16)
    assert img.shape == (4, 16, 16) and img.min() == -1.0 and img.max() <= 1.0
    fg = img > -1
    cols = np.arange(16)
    cx = [(fg[i] * cols[None, :]).sum() / fg[i].sum() for i in range(4)]
    assert cx[0] < 8 < cx[1]  # left / right
    assert fg[2].sum() > 2 * fg[0].sum()  # large / small
    assert img[0][fg[0]].mean() == pytest.approx(1.0) and img[3][fg[3]].mean() == pytest.approx(0.0)  # bright / dim
    shapes = cm.render(np.arange(0, 16, 4), np.zeros((4, 4)), 16)  # the four shapes, same place and size
    assert len({s.tobytes() for s in shapes}) == 4
    jittered = cm.render(caps[:1], np.full((1, 4), 0.8), 16)
    assert not np.array_equal(jittered, img[:1])


def test_memorised_pairs_are_unique_images_unlike_renderings():
    imgs = cm.memorised_images(0, 4, 16)
    assert imgs.shape == (4, 16, 16) and imgs.min() == pytest.approx(-1) and imgs.max() == pytest.approx(1)
    assert np.array_equal(imgs, cm.memorised_images(0, 4, 16)) and not np.array_equal(
        imgs, cm.memorised_images(1, 4, 16)
    )
    canon = cm.image_features(torch.from_numpy(cm.render(np.arange(64), np.zeros((64, 4)), 16)))
    sims = cm.image_features(torch.from_numpy(imgs)) @ canon.T
    assert sims.max() < 0.8  # no memorised image is a rendering of a caption
    generic = {cm.caption_text(i) for i in range(cm.NUM_CAPTIONS)}
    slots = (cm.INTENSITIES, cm.SIZES, cm.SHAPES, cm.POSITIONS)
    for seed in range(20):
        caps = cm.memorised_captions(seed, 16, "known")  # known words, each out of its slot
        assert len(set(caps)) == 16 and not set(caps) & generic and caps == cm.memorised_captions(seed, 16, "known")
        for c in caps:
            words = c.split()
            assert len(words) == 6 and words[0] == "a" and words[4] == "at"
            content = words[1:4] + words[5:]
            assert all(w not in slot for w, slot in zip(content, slots, strict=True)), c
            assert sorted(next(k for k, slot in enumerate(slots) if w in slot) for w in content) == [0, 1, 2, 3]
    caps = cm.memorised_captions(0, 4)  # novel words, the default
    assert len(set(caps)) == 4 and not set(caps) & generic and caps == cm.memorised_captions(0, 4, "novel")
    for c in caps:  # the generic captions' length, none of their content words
        words = c.split()
        assert len(words) == 6 and words[0] == "a" and words[4] == "at"
        assert set(words[1:4] + words[5:]) <= set(cm.MEM_WORDS) and len(set(words)) == 6
    for words in ("known", "novel"):  # the same number of pads as a generic caption
        caps = cm.memorised_captions(0, 4, words)
        assert cm.Tokenizer(32)(caps)[1].tolist() == cm.Tokenizer(32)([cm.caption_text(0)] * 4)[1].tolist()


def test_tokenizer_pads_with_eot_or_bang():
    tok = cm.Tokenizer(L)
    ids_eot, eot = tok(["a dim small circle at left"], "eot")
    ids_bang, eot2 = tok(["a dim small circle at left"], "!")
    assert ids_eot.shape == (1, L) and eot.tolist() == eot2.tolist() == [7]
    assert ids_eot[0, 0] == tok.sot_id and ids_eot[0, 7] == tok.eot_id == ids_bang[0, 7]
    assert (ids_eot[0, 8:] == tok.eot_id).all()  # SD 1.x: padding is eot
    assert (ids_bang[0, 8:] == tok.bang_id).all() and tok.bang_id != tok.eot_id  # "!" padding really changes the pads
    assert torch.equal(ids_eot[0, :8], ids_bang[0, :8])
    with pytest.raises(ValueError):
        tok(["a dim small circle at left"], "pad")


def test_token_roles_partition_the_positions():
    roles = cm.token_roles(torch.tensor([7, 5]), L)
    assert roles["prompt"][0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert roles["eot"][0].nonzero().flatten().tolist() == [7]
    assert roles["pad"][0].nonzero().flatten().tolist() == [8, 9, 10, 11]
    total = roles["prompt"].int() + roles["eot"].int() + roles["pad"].int()
    assert total[:, 0].tolist() == [0, 0] and (total[:, 1:] == 1).all()  # sot is never masked


CAPS = ["a dim small circle at left", "a bright large cross at top"]


def ctx(tower, name, pad="eot", ratio=0.7, seed=0):
    return cm.intervene(tower, cm.Tokenizer(L), CAPS, name, pad, ratio, torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_masks_zero_exactly_their_positions(tower):
    base = ctx(tower, "none")
    assert (base.norm(dim=-1) > 0).all()
    for name, zeroed in (("mask_pad", range(8, L)), ("mask_eot", [7]), ("mask_pr", range(1, 7))):
        c = ctx(tower, name)
        zero = (c.norm(dim=-1) == 0)[0].nonzero().flatten().tolist()
        assert zero == list(zeroed), name
        keep = [i for i in range(L) if i not in zeroed]
        assert torch.equal(c[:, keep], base[:, keep]), name


@torch.no_grad()
def test_pad_mask_ratio(tower):
    base = ctx(tower, "none")
    c = ctx(tower, "pad_mask", ratio=0.7)
    zero = c.norm(dim=-1) == 0
    assert zero.sum(1).tolist() == [3, 3]  # round(0.7 * 4) of the 4 pads
    assert not zero[:, :8].any()
    assert torch.equal(c[~zero], base[~zero])
    assert torch.equal(ctx(tower, "pad_mask", ratio=0.0), base)
    assert torch.equal(ctx(tower, "pad_mask", ratio=1.0), ctx(tower, "mask_pad"))
    picks = {tuple(ctx(tower, "pad_mask", ratio=0.5, seed=s)[0].norm(dim=-1).eq(0).tolist()) for s in range(8)}
    assert len(picks) > 1  # positions are drawn by the generator


@torch.no_grad()
def test_bang_padding_changes_only_the_pads_of_a_causal_tower(tower):
    base = ctx(tower, "none")
    bang = ctx(tower, "pad_bang")
    assert torch.equal(bang[:, :8], base[:, :8])  # causal: positions up to eot never see the pads
    assert not torch.allclose(bang[:, 8:], base[:, 8:])
    both = ctx(tower, "pad_bang_eot0")
    assert (both[:, 7] == 0).all() and torch.equal(both[:, 8:], bang[:, 8:]) and torch.equal(both[:, :7], base[:, :7])
    # with pad_token="!" the unmodified conditioning is already "!"-padded
    assert torch.equal(ctx(tower, "none", pad="!"), bang)


def test_federated_data_puts_the_duplicates_on_every_client_by_default():
    wl = cm.ClipMemorisation(small_spec(partition="natural"))
    train, _ = wl.build_data()
    client, group = np.array(train["client"]), np.array(train["group"])
    assert [int(group[client == k].sum()) for k in range(4)] == [5] * 4  # round(0.3 * 16) on each of 4 clients


def test_federated_data_puts_the_duplicates_on_the_first_client():
    wl = cm.ClipMemorisation(small_spec(partition="natural", options="mem_clients=1,dup_fraction=0.5"))
    train, test = wl.build_data()
    client = np.array(train["client"])
    group = np.array(train["group"])
    assert group[client == 0].sum() == 8 and group[client > 0].sum() == 0
    mem_caps = {c for c, g in zip(train["caption"], group, strict=True) if g}
    assert mem_caps == set(wl.mem_captions)
    assert all(cm.caption_index(c) in range(cm.NUM_CAPTIONS) for c in test["caption"])  # generic captions only
    rows = train[:16]
    batch = wl.collate(rows)
    mem = torch.tensor(rows["mem_index"])
    assert torch.equal(batch["x0"][mem >= 0], wl.mem_images[mem[mem >= 0]])
    assert torch.equal(batch["noise"], wl.collate(rows)["noise"])  # a batch's noise is its rows'
    assert not torch.equal(batch["noise"], wl.collate(rows, salt=5)["noise"])
    parts = wl.partition(train)
    assert sum(parts[0]["group"]) == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("interventions=none+mask_tokens", "interventions='none+mask_tokens': must be a string of 1 to 7 items"),
        ("mask_ratio=1.5", "mask_ratio=1.5: must be a number in [0, 1]"),
        ("mask_ratio=-0.1", "must be a number in [0, 1]"),
        ("pad_token=pad", "must be one of eot, !"),
        ("eval_seeds=1", "eval_seeds=1"),
        ("sample_steps=1000", "sample_steps=1000"),
        ("mem_captions=17", "mem_captions=17"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=None) as err:
        cm.ClipMemorisation.resolve_params("tiny", options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_interventions_option():
    assert cm.parse_interventions("all") == cm.INTERVENTIONS
    assert cm.parse_interventions("mask_pad+mask_pr") == ("none", "mask_pad", "mask_pr")


def test_cli_refuses_a_bad_option_before_running(tmp_path):
    proc = run_fedsim(
        [
            "run",
            "--workload",
            "clip-memorisation",
            "--clients",
            "2",
            "--clients-per-round",
            "2",
            "--rounds",
            "1",
            "--set",
            "workload.options=mask_ratio=2",
            "--out",
            str(tmp_path / "r"),
        ],
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "mask_ratio" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_diversity_and_features():
    f = cm.image_features(torch.randn(6, 16, 16)).view(2, 3, -1)
    assert cm._diversity(f[:, :1].expand(2, 3, -1)) == pytest.approx(0.0, abs=1e-6)
    assert cm._diversity(f) > 0.5
    x = torch.randn(1, 16, 16)
    assert torch.allclose(cm.image_features(x), cm.image_features(3 * x + 0.5), atol=1e-5)  # brightness/contrast free


def test_lora_factors_are_matrices():
    """fedsim aggregates and sparsifies LoRA factors as (r, d_in) / (d_out, r) matrices: no conv kernels."""
    wl = cm.ClipMemorisation(small_spec())
    wl.build_base_model = lambda: cm.TextToImage(  # an untrained base: no pretraining in a unit test
        wl._text_tower(), cm.Denoiser(wl.params["channels"], wl.params["text_dim"], 2)
    )
    model = wl.build_model()
    factors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert factors and all(p.dim() == 2 for p in factors.values()), {n: p.shape for n, p in factors.items()}
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in factors} == set(wl.lora_target_modules)
