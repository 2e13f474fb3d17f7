"""Fine-tuning: LoRA learns, adapters interoperate with PEFT, labels, data validation, resume, DDP."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_reference_model
from finetune_data import write_colour_dataset
from qwen2vl import Qwen2VL, Qwen2VLModel, SamplingParams
from qwen2vl.finetune import LoraSettings, TrainSettings, finetune
from qwen2vl.finetune.data import IGNORE, DatasetError, assistant_labels, batch_order, read_records
from qwen2vl.finetune.lora import load_adapter
from qwen2vl.processing import Processor

LORA = LoraSettings(r=8, alpha=16, dropout=0.0)


def settings(output: Path, **overrides) -> TrainSettings:
    base = dict(output=output, lora=LORA, batch_size=4, max_steps=30, lr=5e-3, warmup_ratio=0.1, seed=1)
    return TrainSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft-data")
    return {"train": write_colour_dataset(root, 24), "eval": write_colour_dataset(root, 8, "eval.jsonl")}


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, data, tmp_path_factory):
    output = tmp_path_factory.mktemp("ft-out")
    rows = finetune(tiny_checkpoint, data["train"], settings(output, eval_every=10), eval_file=data["eval"])
    return output, rows


def test_lora_training_halves_the_loss(trained):
    _, rows = trained
    assert len(rows) == 30
    assert sum(r["loss"] for r in rows[-5:]) / 5 <= 0.5 * rows[0]["loss"]
    assert [r["step"] for r in rows if "eval_loss" in r] == [10, 20, 30]


def test_metrics_are_written_as_jsonl(trained):
    output, rows = trained
    written = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in written] == [r["loss"] for r in rows]
    assert all({"step", "loss", "lr", "tokens_per_second", "epoch"} <= set(r) for r in written)


def test_adapter_is_saved_in_peft_format(trained):
    output, _ = trained
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    from safetensors.torch import load_file

    keys = load_file(str(output / "adapter_model.safetensors"))
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys


def test_adapter_reloads_and_changes_generation(trained, tiny_checkpoint, data):
    output, _ = trained
    question = json.loads(data["eval"].read_text().splitlines()[0])["messages"][:1]
    question[0]["content"][0]["image"] = str(data["eval"].parent / question[0]["content"][0]["image"])
    greedy = SamplingParams(max_tokens=6, temperature=0)
    base = Qwen2VL.from_pretrained(tiny_checkpoint).generate([question], greedy)[0].text
    tuned = Qwen2VL.from_pretrained(tiny_checkpoint, lora=output).generate([question], greedy)[0].text
    assert tuned != base
    assert "square" in tuned


def _image_conversation(data):
    messages = json.loads(data["eval"].read_text().splitlines()[1])["messages"]
    messages[0]["content"][0]["image"] = str(data["eval"].parent / messages[0]["content"][0]["image"])
    return messages


def test_peft_loads_our_adapter_and_gives_our_logits(trained, tiny_checkpoint, data):
    from peft import PeftModel

    output, _ = trained
    processor = Processor.from_pretrained(tiny_checkpoint)
    inputs = processor(_image_conversation(data))
    ours = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    load_adapter(ours, output)
    reference = PeftModel.from_pretrained(load_reference_model(tiny_checkpoint), str(output)).eval()
    with torch.inference_mode():
        expected = reference(**inputs).logits
        actual = ours.eval()(**inputs)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_merged_checkpoint_equals_the_adapter_applied_model(trained, tiny_checkpoint, data, tmp_path):
    output, _ = trained
    merged_dir = tmp_path / "merged"
    out = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "merge", str(tiny_checkpoint), str(output),
                          str(merged_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    inputs = Processor.from_pretrained(merged_dir)(_image_conversation(data))
    adapted = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    load_adapter(adapted, output)
    merged = Qwen2VLModel.from_pretrained(str(merged_dir))
    with torch.inference_mode():
        expected, actual = adapted.eval()(**inputs), merged(**inputs)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_labels_cover_exactly_the_assistant_answers_and_their_end_tokens(tiny_checkpoint, data):
    processor = Processor.from_pretrained(tiny_checkpoint)
    image = _image_conversation(data)[0]["content"][0]
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [image, {"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": "Yes, blue."},
    ]
    ids, _, _ = processor.encode_conversation(conversation, add_generation_prompt=False)
    labels = assistant_labels(processor, ids)
    labelled = [token for token, label in zip(ids, labels) if label != IGNORE]
    tokenizer = processor.tokenizer
    end = tokenizer.token_to_id("<|im_end|>")
    expected = tokenizer.encode("Blue.").ids + [end] + tokenizer.encode("Yes, blue.").ids + [end]
    assert labelled == expected
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels))


def test_invalid_lines_are_reported_with_line_numbers(tiny_checkpoint, data, tmp_path):
    good = data["train"].read_text().splitlines()[0]
    lines = [good, "{not json", json.dumps([{"role": "user", "content": "no answer"}]),
             good.replace("img/train.jsonl-0.png", "img/missing.png"), good]
    path = data["train"].parent / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    processor = Processor.from_pretrained(tiny_checkpoint)
    with pytest.raises(DatasetError) as error:
        read_records(path, processor, max_length=4096)
    message = str(error.value)
    assert "3 invalid line(s)" in message and "line 2:" in message and "line 3: no assistant turn" in message
    assert "line 4: image 1: no such file" in message
    records, problems = read_records(path, processor, max_length=4096, skip_invalid=True)
    assert [r.line for r in records] == [1, 5] and len(problems) == 3
    with pytest.raises(DatasetError, match="line 1: .* is above --max-length 10"):
        read_records(data["train"], processor, max_length=10)


def test_checking_in_several_processes_gives_the_one_process_result(tiny_checkpoint, data, monkeypatch):
    good = data["train"].read_text().splitlines()
    lines = good[:3] + ["{not json"] + good[3:6] + ["", good[6].replace("img/train.jsonl-6.png", "img/gone.png")]
    path = data["train"].parent / "chunks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    processor = Processor.from_pretrained(tiny_checkpoint)
    monkeypatch.setattr("qwen2vl.finetune.data.MIN_LINES_PER_PROCESS", 2)  # two workers, four lines each
    alone = read_records(path, processor, max_length=4096, skip_invalid=True)
    shared = read_records(path, processor, max_length=4096, skip_invalid=True, workers=2)
    assert shared == alone
    assert [r.line for r in shared[0]] == [1, 2, 3, 5, 6, 7]
    assert [p.split(":")[0] for p in shared[1]] == ["chunks.jsonl line 4", "chunks.jsonl line 9"]
    with pytest.raises(DatasetError, match="2 invalid line"):
        read_records(path, processor, max_length=4096, workers=2)


def test_a_daemon_process_checks_the_data_itself(tiny_checkpoint, data, monkeypatch):
    processor = Processor.from_pretrained(tiny_checkpoint)
    monkeypatch.setattr("qwen2vl.finetune.data.MIN_LINES_PER_PROCESS", 2)
    expected = read_records(data["train"], processor, max_length=4096)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:  # a Pool's workers are daemons, which may not start processes
        checked = pool.apply(read_records, (data["train"], processor, 4096), {"workers": 2})
    assert checked == expected


def test_a_truncated_picture_is_reported_before_training(tiny_checkpoint, data, tmp_path):
    picture = data["train"].parent / "img" / "train.jsonl-0.png"
    truncated = picture.with_name("truncated.png")
    whole = picture.read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    good = data["train"].read_text().splitlines()[0]
    path = data["train"].parent / "truncated.jsonl"
    path.write_text(good.replace("img/train.jsonl-0.png", "img/truncated.png") + "\n")
    with pytest.raises(DatasetError, match="line 1: image 1: unreadable or truncated image"):
        read_records(path, Processor.from_pretrained(tiny_checkpoint), max_length=4096)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_losses(tiny_checkpoint, data, tmp_path):
    dropout = LoraSettings(r=8, alpha=16, dropout=0.1)  # randomness in every step: the RNG state must resume too
    full = finetune(tiny_checkpoint, data["train"], settings(tmp_path / "a", lora=dropout, max_steps=6, save_every=3))
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    os.rename(tmp_path / "a" / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = finetune(tiny_checkpoint, data["train"], settings(resumed_dir, lora=dropout, max_steps=6, save_every=3),
                       resume=True)
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[3:]], rel=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tiny_checkpoint, data, tmp_path):
    common = ["--data", str(data["train"]), "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0",
              "--max-steps", "5", "--lr", "5e-3", "--seed", "1"]
    one = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "finetune", str(tiny_checkpoint), *common,
                          "--batch-size", "4", "--output", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29512", "-m", "qwen2vl.cli", "finetune", str(tiny_checkpoint), *common, "--batch-size", "2",
                          "--output", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max() <= 1e-3 * a[k].abs().max() for k in a)  # float rounding through Adam


def test_finetune_cli_trains_and_generate_uses_the_adapter(tiny_checkpoint, data, tmp_path):
    output = tmp_path / "cli-out"
    run = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "finetune", str(tiny_checkpoint), "--data",
                          str(data["train"]), "--output", str(output), "--max-steps", "3", "--batch-size", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "step 3/3" in run.stderr and (output / "adapter_model.safetensors").is_file()
    answer = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "generate", str(tiny_checkpoint), "--lora",
                             str(output), "--prompt", "Hi", "--max-tokens", "3"], capture_output=True, text=True,
                            timeout=300)
    assert answer.returncode == 0, answer.stderr


def test_an_adapter_made_by_peft_loads_into_our_model(tiny_checkpoint, data, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    reference = get_peft_model(load_reference_model(tiny_checkpoint), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)  # PEFT starts B at zero; make the adapter do something
    reference.save_pretrained(str(tmp_path / "peft-adapter"))
    inputs = Processor.from_pretrained(tiny_checkpoint)(_image_conversation(data))
    ours = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    load_adapter(ours, tmp_path / "peft-adapter")
    with torch.inference_mode():
        expected = reference.eval()(**inputs).logits
        actual = ours.eval()(**inputs)
        base = Qwen2VLModel.from_pretrained(tiny_checkpoint)(**inputs)
    assert not torch.allclose(base, expected)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_cpu_training_flushes_denormals_and_restores_them_afterwards(tiny_checkpoint, data, tmp_path, monkeypatch):
    from qwen2vl.finetune.trainer import Trainer

    seen, step = [], Trainer._step

    def observing_step(self, index):
        seen.append(float(torch.tensor([1e-40]) * 1.0))
        return step(self, index)

    monkeypatch.setattr(Trainer, "_step", observing_step)
    finetune(tiny_checkpoint, data["train"], settings(tmp_path, max_steps=2))
    assert seen == [0.0, 0.0]
    assert float(torch.tensor([1e-40]) * 1.0) > 0


@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_example_is_used_once_per_epoch_in_a_seeded_order(group_by_length):
    lengths = [(i * 37) % 101 for i in range(203)]
    first = batch_order(lengths, 8, seed=1, epoch=0, group_by_length=group_by_length)
    assert sorted(i for batch in first for i in batch) == list(range(203))
    assert first == batch_order(lengths, 8, seed=1, epoch=0, group_by_length=group_by_length)
    assert first != batch_order(lengths, 8, seed=1, epoch=1, group_by_length=group_by_length)


def test_length_grouping_puts_similar_lengths_together_and_plain_batches_do_not():
    lengths = [(i * 37) % 101 for i in range(800)]

    def mean_spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert mean_spread(batch_order(lengths, 8, 1, 0, group_by_length=True)) < 5
    assert mean_spread(batch_order(lengths, 8, 1, 0, group_by_length=False)) > 50


def test_per_example_loss_is_the_mean_of_each_answers_own_token_mean(tiny_checkpoint, tmp_path):
    import torch.nn.functional as F

    from qwen2vl.finetune.data import collate, encode_example, line_messages

    answers = ["Red.", "The square in the middle of this picture is painted a bright shade of red today."]
    lines = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}]}
             for i, a in enumerate(answers * 2)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (row,) = finetune(tiny_checkpoint, path, settings(tmp_path / "out", max_steps=1, loss_per="example"))

    model, processor = Qwen2VLModel.from_pretrained(tiny_checkpoint), Processor.from_pretrained(tiny_checkpoint)
    means = []
    with torch.no_grad():
        for line in lines:
            batch = collate(processor, [encode_example(processor, line_messages(line["messages"], tmp_path))])
            labels = batch.pop("labels")[0, 1:]
            logits = model.logits(model.hidden_states(**batch)[0, :-1])
            means.append(float(F.cross_entropy(logits[labels != IGNORE], labels[labels != IGNORE])))
    assert row["loss"] == pytest.approx(sum(means) / len(means), rel=1e-5)


def test_an_unknown_loss_averaging_is_a_config_error(tmp_path):
    from qwen2vl.errors import ConfigError

    with pytest.raises(ConfigError, match="loss_per"):
        settings(tmp_path, loss_per="batch")
