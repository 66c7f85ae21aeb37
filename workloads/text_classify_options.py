"""The options of :mod:`workloads.text_classify` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from workloads.options import BOOL, Declaration, Option, Range

SHARE = Range(0, 1)

DECLARATION = Declaration(
    options={
        "max_len": Option(20, Range(8, 512), "tokens per sentence (MiniLM has 512 positions)"),
        "pretrained": Option(True, BOOL, "MiniLM's pretrained weights (false: a random encoder of its shape)"),
        "distractor_fraction": Option(0.7, SHARE, "share of sentences that also name another topic's words"),
        "test_unseen_words": Option(0.5, SHARE, "share of test sentences with topic words never trained on"),
        "test_unseen_templates": Option(0.5, SHARE, "share of test sentences with templates never trained on"),
    },
    preset_overrides={"tiny": {}, "base": {"max_len": 64}, "random-init": {"pretrained": False}},
)
