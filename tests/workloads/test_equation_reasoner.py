"""equation-reasoner's data, tokenizer and answer parsing (no model training here)."""

import re

import numpy as np
import pytest

from tests.helpers.workloads import small_spec
from workloads import equation_reasoner as eq
from workloads.text_tools import WordTokenizer, split_words

TOK = WordTokenizer(eq.vocabulary_texts())


def test_tokenizer_splits_digits_and_round_trips():
    assert split_words("8*2=16 #### 16") == ["8", "*", "2", "=", "1", "##6", "####", "1", "##6"]
    assert split_words("8 8") != split_words("88")
    text = "5+3=8 8*2=16 #### 16"
    ids = TOK.encode(text)
    assert ids[-1] == TOK.eos_id and TOK.unk_id not in ids
    assert TOK.decode(ids) == "5 + 3 = 8 8 * 2 = 16 #### 16"
    assert TOK.decode(TOK.encode("zebra 7")) == "<unk> 7"
    ids, mask = TOK.batch(["1+1=2", "12"], max_len=64)
    assert ids.shape == (2, 6) and mask[1].tolist() == [1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("5+3=8 #### 8", 8),
        ("#### 16", 16),
        ("so 12 . ####  7 trailing", 7),
        ("8 no marker", None),
        ("#### __import__('os')", None),
    ],
)
def test_parse_answer_reads_digits_only(text, answer):
    assert eq.parse_answer(text) == answer


def test_formats_share_the_same_correct_equations():
    rng = np.random.default_rng(0)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for _ in range(300):
        num_ops = int(rng.integers(1, 4))
        start, steps = eq.draw_numbers(rng, num_ops, np.full(3, 1 / 3), 99)
        question, targets = eq.render(rng, start, steps, int(rng.integers(4)))
        equations = targets["equation"].split(" #### ")[0].split()
        assert len(equations) == num_ops
        value = start
        for text, (op, b, result) in zip(equations, steps, strict=True):
            a, o, bb, r = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)", text).groups()
            assert (int(a), o, int(bb), int(r)) == (value, op, b, result) and ops[o](value, b) == result
            assert 1 <= result <= 99
            assert text in targets["nl"]  # the chain of thought carries the same equations
            value = result
        answer = steps[-1][2]
        assert targets["answer"] == f"#### {answer}"
        assert all(eq.parse_answer(t) == answer for t in targets.values())
        assert str(start) in question and all(str(b) in question for _, b, _ in steps)
        assert TOK.unk_id not in TOK.encode(question) + TOK.encode(targets["nl"])


def test_splits_are_disjoint_number_combinations():
    wl = eq.EquationReasoner(small_spec(num_clients=6, samples_per_client=40, test_samples=200))
    train, test = wl.build_data()
    nums = re.compile(r"\d+")

    def combos(d):
        return {tuple(nums.findall(t.split(" #### ")[0])) for t in d["target"]}

    assert not combos(train) & combos(test)
    assert set(test["num_ops"]) == {1, 2, 3}
    rng = np.random.default_rng(1)
    pre = eq.generate_problems(300, rng, eq.PRETRAIN_BUCKETS, "equation", 99)
    assert not combos({"target": pre["target"]}) & (combos(train) | combos(test))


def test_natural_split_gives_clients_their_own_family_and_op_mix():
    wl = eq.EquationReasoner(small_spec(num_clients=8, samples_per_client=60, partition="natural"))
    train, _ = wl.build_data()
    parts = wl.partition(train)
    families = [set(p["family"]) for p in parts]
    assert all(len(f) == 1 for f in families) and len(set.union(*families)) == 4
    for k, p in enumerate(parts):
        assert set(p["client"]) == {k} and len(p) == 60
        _, weights = eq.client_profile(0, k)
        main = eq.OPS[int(np.argmax(weights))]
        counts = {op: sum(t.split(" #### ")[0].count(op) for t in p["target"]) for op in eq.OPS}
        assert max(counts, key=counts.get) == main or counts[main] >= 0.3 * sum(counts.values())


def test_target_format_option_changes_only_the_targets():
    a, _ = eq.EquationReasoner(small_spec()).build_data()
    b, _ = eq.EquationReasoner(small_spec(options="target_format=answer")).build_data()
    assert a["question"] == b["question"] and a["answer"] == b["answer"]
    assert all(t.startswith("#### ") for t in b["target"])
