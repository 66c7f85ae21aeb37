"""workload.dataset: local files and folders through the same datasets.load_dataset path as Hub names."""

import json

import pytest
import torch

from fedsim.errors import ConfigError
from tests.helpers.workloads import small_spec
from workloads import data as wdata
from workloads.equation_reasoner import EquationReasoner
from workloads.text_classify import TextClassify


def write_csv(path, rows, header=("sentence", "sentiment")):
    lines = [",".join(header)] + [f"{t},{y}" for t, y in rows]
    path.write_text("\n".join(lines) + "\n")


ROWS = [(f"the film number {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg") for i in range(120)]


def test_csv_file_with_column_mapping(tmp_path):
    f = tmp_path / "reviews.csv"
    write_csv(f, ROWS)
    train, test = wdata.load_external(
        str(f), seed=0, train_size=50, test_size=20, text_column="sentence", label_column="sentiment"
    )
    assert train.column_names == ["text", "label"] and len(train) == 50 and len(test) == 20
    # no test split in a single file: the test rows are held out of the train split
    assert not set(train["text"]) & set(test["text"])
    again, _ = wdata.load_external(
        str(f), seed=0, train_size=50, test_size=20, text_column="sentence", label_column="sentiment"
    )
    assert again["text"] == train["text"]


def test_folder_with_train_and_test_files(tmp_path):
    rows = [{"text": t, "label": int(y == "pos")} for t, y in ROWS]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:100]))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[100:]))
    train, test = wdata.load_external(str(tmp_path), seed=3, train_size=1000, test_size=1000)
    assert len(train) == 100 and len(test) == 20  # the folder's own test split, all of it
    assert set(test["text"]) == {r["text"] for r in rows[100:]}
    assert wdata.class_names(train, test) == ["0", "1"]


def test_text_classify_on_a_local_csv(tmp_path):
    f = tmp_path / "reviews.csv"
    write_csv(f, ROWS)
    spec = small_spec(dataset=str(f), text_column="sentence", label_column="sentiment", partition="dirichlet")
    wl = TextClassify(spec)
    train, test = wl.build_data()
    assert wl.class_names == ["neg", "pos"] and set(train["label"]) == {0, 1}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = wl.build_model()
    assert model.base_model.model.head.modules_to_save["default"].out_features == 2
    metrics = wl.evaluate(model, test)
    assert 0 <= metrics["accuracy"] <= 1 and "accuracy_unseen_words" not in metrics
    assert sum(len(p) for p in wl.partition(train)) == len(train)


def test_equation_reasoner_on_a_local_jsonl(tmp_path):
    rows = [{"question": f"what is {a} plus 2 ?", "answer": f"{a}+2={a + 2} #### {a + 2}"} for a in range(100)]
    f = tmp_path / "problems.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    wl = EquationReasoner(small_spec(dataset=str(f)))
    train, test = wl.build_data()
    assert len(train) == 4 * 16 and len(test) == 32  # held out of the only split
    assert all(a == int(t.split("#### ")[1]) for a, t in zip(train["answer"], train["target"], strict=True))
    batch = wl.collate(train[:4])
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != -100).any()


def test_hub_names(monkeypatch):
    assert wdata.hub_candidates("glue/sst2") == [("glue/sst2", None), ("glue", "sst2")]
    assert wdata.hub_candidates("nyu-mll/glue:sst2") == [("nyu-mll/glue", "sst2")]
    assert wdata.hub_candidates("imdb") == [("imdb", None)]
    tried = []

    def fake_load(path, name=None, **kw):
        tried.append((path, name))
        raise ConnectionError("offline")

    monkeypatch.setattr("datasets.load_dataset", fake_load)
    with pytest.raises(ConfigError, match=r"workload.dataset='glue/sst2': not a local file or folder.*offline"):
        wdata.open_dataset("glue/sst2")
    assert tried == [("glue/sst2", None), ("glue", "sst2")]


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        wdata.open_dataset(str(tmp_path / "missing.csv"))
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ConfigError, match="unknown file type"):
        wdata.open_dataset(str(tmp_path / "x.xlsx"))
    f = tmp_path / "reviews.csv"
    write_csv(f, ROWS)
    with pytest.raises(ConfigError, match=r"workload.text_column='body': .* has columns sentence, sentiment"):
        wdata.load_external(str(f), seed=0, train_size=5, test_size=5, text_column="body")
    with pytest.raises(ConfigError, match=r"workload.label_column='': .*set workload.label_column"):
        wdata.load_external(str(f), seed=0, train_size=5, test_size=5, text_column="sentence")


def test_config_rejects_a_missing_local_dataset(tmp_path):
    from fedsim.core.checks import checked_config

    with pytest.raises(ConfigError, match=r"workload.dataset='/.*missing.csv': no such file or folder"):
        checked_config({"workload.dataset": str(tmp_path / "missing.csv")})
    f = tmp_path / "reviews.csv"
    write_csv(f, ROWS)
    assert checked_config({"workload.dataset": str(f)}).workload.dataset == str(f)
