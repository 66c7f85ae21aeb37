"""text-classify's generated data: eight topics, distractors, test-only words and templates."""

from workloads import text_classify as tc


def topic_of(word: str) -> set[int]:
    return {i for i, t in enumerate(tc.TOPICS) if word in tc.TOPIC_WORDS[t][0] + tc.TOPIC_WORDS[t][1]}


def test_topic_words_are_distinct():
    words = [w for t in tc.TOPICS for part in tc.TOPIC_WORDS[t] for w in part]
    assert len(words) == len(set(words)) and len(tc.TOPICS) == 8


def test_train_sentences_use_only_training_words_and_templates():
    train = tc.generate_topics(800, seed=1, distractor_fraction=0.7)
    test_only = {w for t in tc.TOPICS for w in tc.TOPIC_WORDS[t][1]}
    assert not any(set(s.split()) & test_only for s in train["text"])
    assert not any(train["unseen"]) and not any(train["unseen_template"])
    with_distractor = 0
    for text, label in zip(train["text"], train["label"], strict=True):
        topics = [topic_of(w) for w in text.split() if topic_of(w)]
        assert {label} in topics  # a word of its own topic
        others = {t for ts in topics for t in ts} - {label}
        with_distractor += bool(others)
        assert len(others) <= 1  # distractors come from one other topic
    assert 0.6 < with_distractor / len(train) < 0.8


def test_test_set_mixes_unseen_words_and_templates():
    test = tc.generate_topics(1000, seed=2, distractor_fraction=0.7, unseen_words=0.5, unseen_templates=0.5)
    assert 0.4 < sum(test["unseen"]) / 1000 < 0.6 and 0.4 < sum(test["unseen_template"]) / 1000 < 0.6
    assert set(test["label"]) == set(range(8))
    assert tc.generate_topics(50, 2, 0.7, 0.5, 0.5).to_dict() == tc.generate_topics(50, 2, 0.7, 0.5, 0.5).to_dict()
