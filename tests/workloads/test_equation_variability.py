"""equation-reasoner's ``nl_variability`` option: how varied the natural-language targets are."""

import re

import numpy as np
import pytest

from fedsim.errors import ConfigError
from tests.helpers.workloads import small_spec
from workloads import equation_reasoner as eq
from workloads.equation_reasoner_options import NL_VARIABILITY
from workloads.text_tools import WordTokenizer

TOK = WordTokenizer(eq.vocabulary_texts())
NUMBER = re.compile(r"\d+")


def step_phrasings(level: int, n: int = 600) -> tuple[dict[str, set[str]], list[tuple[int, list, dict]]]:
    """Per operation, the distinct step sentences (numbers masked) of ``n`` rendered problems."""
    rng, nl_rng = np.random.default_rng(0), np.random.default_rng(1)
    seen: dict[str, set[str]] = {op: set() for op in eq.OPS}
    problems = []
    for _ in range(n):
        start, steps = eq.draw_numbers(rng, int(rng.integers(1, 4)), np.full(3, 1 / 3), 99)
        _, targets = eq.render(rng, start, steps, int(rng.integers(4)), level, nl_rng)
        sentences = targets["nl"].split(" #### ")[0].split(" . ")
        for (op, _, _), sentence in zip(steps, sentences[1:-1], strict=True):
            seen[op].add(NUMBER.sub("N", sentence))
        problems.append((start, steps, targets))
    return seen, problems


def test_level_0_writes_one_phrasing_and_higher_levels_more():
    counts = []
    for level in NL_VARIABILITY:
        seen, problems = step_phrasings(level)
        counts.append(min(len(s) for s in seen.values()))
        for start, steps, targets in problems:
            equations = targets["equation"].split(" #### ")[0].split()
            positions = [targets["nl"].find(e) for e in equations]
            assert -1 not in positions and positions == sorted(positions)  # same equations, in order
            assert eq.parse_answer(targets["nl"]) == steps[-1][2]
            assert str(start) in targets["nl"].split(" . ")[0].split()  # the opening names the start
            assert TOK.unk_id not in TOK.encode(targets["nl"])  # no word outside the vocabulary
    assert counts[0] == 1 and counts[0] < counts[1] < counts[2] < counts[3]
    assert counts[1] == 3 and counts[2] >= 15 and counts[3] >= 60


def test_level_3_reorders_clauses():
    seen, _ = step_phrasings(3)
    sentences = set.union(*seen.values())
    assert any(s.startswith("N") and "=" in s.split()[0] for s in sentences)  # equation first
    assert any(s.split()[0] in eq.NL_LINK for s in sentences)  # a leading connective
    assert any(not s.startswith("N") and s.split()[0] not in eq.NL_LINK for s in sentences)


@pytest.mark.parametrize("level", [0, 2, 3])
def test_the_level_changes_only_the_nl_targets_and_is_deterministic(level):
    default, default_test = eq.EquationReasoner(small_spec(options="target_format=nl")).build_data()
    spec = small_spec(options=f"target_format=nl,nl_variability={level}")
    varied, varied_test = eq.EquationReasoner(spec).build_data()
    again, _ = eq.EquationReasoner(spec).build_data()
    assert varied["target"] == again["target"]  # deterministic per seed
    for a, b in ((default, varied), (default_test, varied_test)):
        assert a["question"] == b["question"] and a["answer"] == b["answer"] and a["num_ops"] == b["num_ops"]
        assert a["target"] != b["target"]
        equations = [[w for w in t.split() if "=" in w] for t in a["target"]]
        assert equations == [[w for w in t.split() if "=" in w] for t in b["target"]]
    other_seed, _ = eq.EquationReasoner(small_spec(seed=1, options=spec.options)).build_data()
    assert other_seed["target"] != varied["target"]
    if level == 0:
        phrasings = {NUMBER.sub("N", t) for t, k in zip(varied["target"], varied["num_ops"], strict=True) if k == 1}
        assert 1 <= len(phrasings) <= 3  # one per operation


def test_equation_targets_and_base_do_not_depend_on_the_level():
    a = eq.EquationReasoner(small_spec(options="nl_variability=0"))
    b = eq.EquationReasoner(small_spec(options="nl_variability=3"))
    assert a.build_data()[0]["target"] == b.build_data()[0]["target"]
    assert a.pretrain_payload() == b.pretrain_payload()  # one cached base for every level
    c = eq.EquationReasoner(small_spec(options="target_format=nl,nl_variability=0"))
    d = eq.EquationReasoner(small_spec(options="target_format=nl,nl_variability=3"))
    assert c.pretrain_payload() != d.pretrain_payload()


def test_free_form_steps_keep_the_operand_inside_the_equation_only():
    """``nl_operands=free``: the same questions and equations as the default nl targets, each step
    sentence holding no number outside its equation, every word in the vocabulary; a cached base of
    its own; with another variability level it is refused in one line."""
    default, _ = eq.EquationReasoner(small_spec(options="target_format=nl")).build_data()
    free = eq.EquationReasoner(small_spec(options="target_format=nl,nl_operands=free"))
    data, _ = free.build_data()
    assert default["question"] == data["question"] and default["target"] != data["target"]
    for a, b in zip(default["target"], data["target"], strict=True):
        assert [w for w in a.split() if "=" in w] == [w for w in b.split() if "=" in w]
        steps = b.split(" #### ")[0].split(" . ")[1:-1]
        assert steps and all(len(NUMBER.findall(s.replace(s.split()[-1], ""))) == 0 for s in steps), b
        assert TOK.unk_id not in TOK.encode(b)
    restate = eq.EquationReasoner(small_spec(options="target_format=nl"))
    assert free.pretrain_payload() != restate.pretrain_payload()
    with pytest.raises(ConfigError, match="nl_operands='free': free-form steps are their own variant") as err:
        eq.EquationReasoner.resolve_params("tiny", "nl_operands=free,nl_variability=3")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["4", "-1", "1.5", "true", "high"])
def test_bad_levels_are_refused_with_one_line(value):
    with pytest.raises(ConfigError, match=f"nl_variability={value!r}|nl_variability=") as err:
        eq.EquationReasoner.resolve_params("tiny", f"nl_variability={value}")
    assert "\n" not in str(err.value) and "nl_variability" in str(err.value)


@pytest.mark.parametrize(
    ("generated", "plan", "arithmetic"),
    [
        ("5 + 3 = 8 8 * 2 = 16 #### 16", True, [True, True]),
        ("5 + 3 = 8 8 * 2 = 17 #### 17", True, [True, False]),  # right chain, an arithmetic slip
        ("we begin with 5 . adding 3 gives 5 + 3 = 9 . 9 * 2 = 18 . #### 18", True, [False, True]),
        ("5 + 4 = 9 9 * 2 = 18 #### 18", False, [True, True]),  # a wrong operand
        ("5 + 3 = 8 #### 8", False, [True]),  # a step missing
        ("#### 16", False, []),
    ],
)
def test_chain_scores_separate_the_plan_from_the_arithmetic(generated, plan, arithmetic):
    assert eq.chain_scores(generated, "5+3=8 8*2=16 #### 16") == (plan, arithmetic)
    assert eq.chain_scores(generated, "#### 16") is None  # answer-only targets have no chain
