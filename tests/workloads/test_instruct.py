"""instruct: options refused before heavy imports, data from each file format and its checks, the
response-only loss, the tiny tokenizer's save/load round trip, the memory estimate against measured
peak memory, a local folder loaded through ``from_pretrained`` and an offline hub name refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fedsim.errors import ConfigError
from tests.helpers.refusals import REPO
from tests.helpers.workloads import quick_spec
from workloads import declaration
from workloads.instruct import (
    Instruct,
    build_tiny_tokenizer,
    generate_rows,
    make_example,
    memory_estimate,
    normalise,
)
from workloads.instruct_options import TASKS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network, whatever a test asks for


def workload(**overrides) -> Instruct:
    return Instruct(quick_spec("instruct", **overrides))


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, named",
    [
        ("max_length=8", "max_length=8"),
        ("lora_targets=q_proj nosuch?", "lora_targets="),
        ("model=bad name", "model="),
        ("packing=1", "packing=1"),
        ("max_new_tokens=200", "max_new_tokens=200"),
        ("d_model=90", "d_model=90"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(options, named):
    with pytest.raises(ConfigError) as err:
        declaration("instruct").resolve("instruct", "tiny", options)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_bad_option_is_refused_before_torch_is_imported(tmp_path):
    """The command line: exit 2, one line, and the process never imported torch (it asks the declaration only)."""
    code = textwrap.dedent(
        """
        import sys
        from fedsim.app.cli import main
        sys.argv = ["fedsim", "run", "--workload", "instruct", "--set", "workload.options=max_length=4",
                    "--out", sys.argv[1]]
        try:
            main()
        except SystemExit as e:
            print("torch" in sys.modules, e.code, file=sys.stderr)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "False 2", proc.stderr
    assert len(lines) == 2 and "max_length=4" in lines[0] and "Traceback" not in proc.stderr


def test_lora_targets_that_match_no_module_and_a_short_max_length_are_refused():
    with pytest.raises(ConfigError, match=r"lora_targets='q_proj nosuch': nosuch matches no linear module"):
        workload(options="lora_targets=q_proj nosuch")
    wl = workload(options="max_length=20")
    with pytest.raises(ConfigError, match=r"max_length=20: the longest prompt of the data has \d+ tokens"):
        wl.build_data()


def test_peft_default_targets_and_explicit_ones():
    assert workload().lora_target_modules == ["q_proj", "v_proj"]  # peft's default for llama
    wl = workload(options="lora_targets=q_proj k_proj v_proj o_proj gate_proj up_proj down_proj")
    assert wl.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert set(wl.lora_target_modules) == set(wl.linear_modules())


def test_an_unknown_hub_name_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        workload(options="model=nobody-here/no-such-model-7b")
    assert str(err.value) == "cannot load nobody-here/no-such-model-7b: no network and not in the local cache"


# -- generated data ---------------------------------------------------------------------------------
def test_generated_tasks_are_right():
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(50):
        for task in TASKS:
            instruction, given, out = make_example(task, rng)
            words = given.split()
            if task == "replace":  # one word changed, to a word the instruction names, from one it names
                changed = [(w, o) for w, o in zip(words, out.split(), strict=True) if w != o]
                assert len(changed) == 1 and all(f" {w} " in f" {instruction} " for w in changed[0])
                continue
            expected = {
                "reverse": lambda w: " ".join(w[::-1]),
                "sort": lambda w: " ".join(map(str, sorted(map(int, w)))),
                "add": lambda w: str(sum(map(int, w))),
                "count": lambda w: str(len(w)),
                "last": lambda w: w[-1],
            }[task](words)
            assert out == expected, (task, given, out)


def test_natural_split_gives_each_client_one_task():
    wl = workload(num_clients=6, partition="natural")
    train, test = wl.build_data()
    parts = wl.partition(train)
    assert [sorted(set(p["category"])) for p in parts] == [[t] for t in TASKS]
    assert set(test["category"]) == set(TASKS)
    assert set(train.column_names) >= {"instruction", "input", "output", "category", "client", "category_id"}


# -- loaded data ------------------------------------------------------------------------------------
def rows(n: int, category: bool = True) -> list[dict]:
    data = generate_rows(list(TASKS), n, __import__("numpy").random.default_rng(1))
    keys = ["instruction", "input", "output"] + (["category"] if category else [])
    return [{k: data[k][i] for k in keys} for i in range(n)]


def write(path, records: list[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(records)
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_each_file_format_loads_with_its_columns(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", rows(120))
    wl = workload(dataset=path, partition="natural")
    train, test = wl.build_data()
    assert len(train) == 4 * 16 and len(test) == 24  # no test split: a fifth held out, at most test_samples
    assert train[0]["output"] and train[0]["instruction"]
    parts = wl.partition(train)
    assert all(len(p) for p in parts) and sum(map(len, parts)) == len(train)


def test_renamed_columns_and_no_input_column(tmp_path):
    records = [{"prompt": r["instruction"] + " " + r["input"], "answer": r["output"]} for r in rows(80)]
    path = write(tmp_path / "data.jsonl", records)
    options = "instruction_column=prompt,output_column=answer,input_column=,category_column="
    train, _ = workload(dataset=path, options=options).build_data()
    assert set(train["input"]) == {""} and set(train["category"]) == {"all"}


def test_column_and_row_checks_are_one_line(tmp_path):
    path = write(tmp_path / "data.jsonl", rows(80))
    with pytest.raises(ConfigError, match=r"output_column='answer': .* has columns instruction, input, output"):
        workload(dataset=path, options="output_column=answer").build_data()
    empty = write(tmp_path / "empty.jsonl", [{"instruction": "", "input": "", "output": "x"}] * 5)
    with pytest.raises(ConfigError, match="no row has both an instruction"):
        workload(dataset=empty).build_data()
    few = write(tmp_path / "few.jsonl", rows(5))
    with pytest.raises(ConfigError, match=r"every client needs at least one row"):
        workload(dataset=few, num_clients=8).build_data()
    skewed = [{**r, "category": "a"} for r in rows(80)] + [{**rows(1)[0], "category": "b"}]
    one = write(tmp_path / "one.jsonl", skewed)  # b's one row goes to client 1; client 3 gets nothing
    with pytest.raises(ConfigError, match=r"natural.*leave 1 of run.clients=4 without rows"):
        workload(dataset=one, partition="natural").build_data()


# -- tokens and loss --------------------------------------------------------------------------------
def test_loss_is_on_response_tokens_only():
    wl = workload()
    train, _ = wl.build_data()
    batch = wl.collate(train[:4])
    for i, (ids, prompt) in enumerate(wl.examples(train[:4], wl.params["max_length"])):
        labels = batch["labels"][i]
        assert (labels[:prompt] == -100).all() and (labels[prompt : len(ids)] == torch.tensor(ids[prompt:])).all()
        assert (labels[len(ids) :] == -100).all()
        response = wl.tokenizer.decode(ids[prompt:], skip_special_tokens=True)
        assert normalise(response) == normalise(train[i]["output"])
        assert ids[-1] == wl.tokenizer.eos_token_id
    model = wl.build_model()  # the loss is the next-token cross-entropy over exactly those labels
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        manual = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
        )
        assert float(wl.loss(model, batch)) == pytest.approx(float(manual), rel=1e-5)
        everything = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
        assert float(wl.loss(model, everything)) != pytest.approx(float(manual), rel=1e-3)  # prompts would count


def test_packing_keeps_every_response_token_and_restarts_positions():
    wl = workload(options="packing=true,max_length=64")
    train, _ = wl.build_data()
    examples = wl.examples(train[:6], 64)
    packed = wl.collate(train[:6])
    assert packed["input_ids"].shape[1] == 64
    assert int((packed["labels"] != -100).sum()) == sum(len(ids) - p for ids, p in examples)
    starts = (packed["position_ids"] == 0).sum()
    assert starts >= len(examples)


def test_tiny_tokenizer_save_and_load_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "### Instruction:\nsort the numbers from smallest to largest .\n\n### Input:\n17 3 99\n\n### Response:\n"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.get_vocab() == tok.get_vocab()
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        assert getattr(loaded, attr) == getattr(tok, attr) is not None
    assert loaded.decode(tok("apple river 17 3")["input_ids"]) == "apple river 17 3"
    assert tok("zzz unknownword")["input_ids"] == [tok.unk_token_id] * 2


def test_a_local_folder_loads_through_from_pretrained(tmp_path):
    """A saved causal LM in a folder (here the tiny base saved again) is what model= takes."""
    wl = workload()
    base = wl.build_base_model()
    base.save_pretrained(tmp_path / "m")
    wl.tokenizer.save_pretrained(tmp_path / "m")
    other = workload(options=f"model={tmp_path / 'm'}")
    assert other.lora_target_modules == ["q_proj", "v_proj"] and not other.tiny
    model = other.build_model()
    train, test = other.build_data()
    loss = float(other.loss(model, other.collate(train[:4])).detach())
    assert loss == pytest.approx(float(wl.loss(wl.build_model(), wl.collate(train[:4])).detach()), rel=1e-5)


# -- memory -----------------------------------------------------------------------------------------
MEASURE = """
import json, sys, torch
from tests.helpers.workloads import quick_spec
from workloads.instruct import Instruct
torch.set_num_threads(1)
options, batch = sys.argv[1], int(sys.argv[2])
wl = Instruct(quick_spec("instruct", options=options, lora_rank=8))
train, _ = wl.build_data()
wl.tiny_folder()  # the base pretrained (or found) before anything is measured
est = wl.memory_estimate(batch)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
length = wl.params["max_length"]  # the estimate is for full sequences: what packing gives, padding at most
ids = torch.randint(4, len(wl.tokenizer), (batch, length), generator=torch.Generator().manual_seed(0))
data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
model = wl.build_model()
model.train()
weights = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-3)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
start = rss("VmRSS:")
for _ in range(2):
    loss = wl.loss(model, data)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
print(json.dumps({"estimate": est, "weights": weights, "training": rss("VmHWM:") - start}))
"""


@pytest.mark.slow  # a fresh process per case, about 10-20 s each
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_estimate_is_within_a_factor_of_measured_peak(tmp_path, checkpointing):
    """A wider tiny model at a long length (activations of a few hundred MB): the weights' bytes exactly those
    of the loaded model's frozen parameters, the training memory (LoRA, AdamW, activations) within 50 % of
    the growth of the peak RSS over two training steps in a fresh process."""
    options = "d_model=256,d_ff=1024,num_layers=4,num_heads=4,max_length=384,pretrain_steps=1,pretrain_samples=8"
    options += f",gradient_checkpointing={str(checkpointing).lower()},tasks=reverse"
    env = {**os.environ, "FEDSIM_CACHE": os.environ.get("FEDSIM_CACHE", str(tmp_path)), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, options, "16"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    est = got["estimate"]
    training = est["lora_bytes"] + est["optimiser_bytes"] + est["activations_bytes"]
    assert 0.5 < got["training"] / training < 1.5, got
    assert got["weights"] == est["weights_bytes"], got


def test_memory_estimate_parts():
    shape = dict(
        weight_bytes=1000, lora_params=10, d_model=8, kv_width=8, d_ff=16, heads=2, vocab=50, batch=2, length=4
    )
    est = memory_estimate(num_layers=2, **shape)
    assert est["lora_bytes"] == est["optimiser_bytes"] == 80
    assert est["total_bytes"] == sum(v for k, v in est.items() if k != "total_bytes")
    ckpt = memory_estimate(num_layers=8, checkpointing=True, **shape)
    full = memory_estimate(num_layers=8, **shape)
    assert ckpt["activations_bytes"] < full["activations_bytes"]


def test_a_run_that_cannot_fit_is_refused_before_the_model_is_built(monkeypatch):
    from fedsim.core.config import build_config
    from fedsim.core.training import _CACHE, load_workload

    cfg = build_config(
        {
            "workload.name": "instruct",
            "workload.options": "memory_limit_gb=0.001,pretrain_steps=1,pretrain_samples=8",
            "run.clients": 4,
            "run.clients_per_round": 4,
        }
    )
    built = []
    monkeypatch.setattr(Instruct, "build_base_model", lambda self: built.append(1))
    _CACHE.clear()
    with pytest.raises(
        ConfigError,
        match=r"train.batch_size=16: instruct needs about .* GB \(weights .*\) per client, more than the 0.001 GB",
    ):
        load_workload(cfg)
    assert built == []
