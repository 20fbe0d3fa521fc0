"""The real TRL path on CPU: a tiny random Llama (real tokenizer) trains with falling loss; LoRA; resume; CLI."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import write_long_dir, write_short

from finetune.assemble import assemble_rows, load_tokenizer, to_dataset
from finetune.config import FinetuneConfig
from finetune.run import run_finetune
from finetune.trainer import build_trainer
from longscale.commands.main import main as longscale_main
from longscale.common.configcli import ConfigError


@pytest.fixture
def data(tmp_path):
    return {"short_data": [str(write_short(tmp_path / "short.jsonl", 24))],
            "long_data": [str(write_long_dir(tmp_path / "gen", [700, 900]))]}


def cfg(tmp_path, model, data, **kw):
    base = dict(model=str(model), output=str(tmp_path / "out"), pack_length=256, max_length=512,
                batch_tokens=256, learning_rate=1e-2, warmup_ratio=0.0, gradient_checkpointing=False, save_steps=1000)
    base.update(kw)
    return FinetuneConfig(**base, **data)


def test_trl_receives_our_labels_untouched(tmp_path, tiny_llama_dir, data):
    config = cfg(tmp_path, tiny_llama_dir, data, per_device_rows=2)
    tokenizer = load_tokenizer(config.model)
    rows, _ = assemble_rows(config, tokenizer)
    trainer = build_trainer(config, to_dataset(rows), tokenizer)
    expected = {tuple(r["input_ids"]): r["labels"] for r in rows}
    seen = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            want = next(v for k, v in expected.items() if list(k) == ids[:len(k)])
            assert labels[:len(want)] == want and set(labels[len(want):]) <= {-100}
            seen += 1
    assert seen == len(rows)


def test_full_finetune_loss_falls_and_rope_is_kept(tmp_path, tiny_llama_dir, data):
    torch.set_num_threads(2)
    result = run_finetune(cfg(tmp_path, tiny_llama_dir, data, max_steps=12))
    losses = result["training"]["losses"]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    out = tmp_path / "out"
    assert (out / "loss_curve.png").stat().st_size > 1000
    saved = json.loads((out / "final" / "config.json").read_text())
    original = json.loads((tiny_llama_dir / "config.json").read_text())
    assert saved["rope_parameters"] == original["rope_parameters"]  # an ABF model stays ABF
    assert saved["rope_parameters"]["rope_theta"] == 500000.0
    assert saved["rope_theta"] == 500000.0  # vLLM's spelling, which save_pretrained drops, is written back
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["rows"] == result["stats"]["rows"] and stats["loss_tokens"] > 0


def test_lora_trains_only_adapters_and_resumes(tmp_path, tiny_llama_dir, data):
    config = cfg(tmp_path, tiny_llama_dir, data, lora_r=4, lora_alpha=8, max_steps=2, save_steps=2)
    first = run_finetune(config)
    assert first["training"]["global_step"] == 2
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-2").is_dir()
    resume = config.checkpointing.model_copy(update={"resume": True})
    with pytest.raises(ConfigError, match="already holds files .*--resume.*--overwrite"):
        run_finetune(config)  # a second run into the same output never replaces the first silently
    with pytest.raises(ConfigError, match=r"other settings \(--lora-r: 4 -> 8\)"):
        run_finetune(config.model_copy(update={"checkpointing": resume, "lora_r": 8}))
    resumed = run_finetune(config.model_copy(update={"max_steps": 3, "checkpointing": resume}))
    assert resumed["training"]["global_step"] == 3
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_finetune(config.model_copy(update={"checkpointing": resume, "output": str(tmp_path / "fresh")}))


def test_cli_prepare_only_writes_dataset_and_stats(tmp_path, tiny_llama_dir, data, capsys):
    import datasets

    out = tmp_path / "prep"
    code = longscale_main(["finetune", "--model", str(tiny_llama_dir), "--output", str(out), "--prepare-only",
                           "--pack-length", "256", "--max-length", "512", "--no-loss-on-long-input",
                           "--short-data", data["short_data"][0], "--long-data", data["long_data"][0]])
    assert code == 0
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert {"input_ids", "labels", "seq_lengths", "kind"} <= set(ds.column_names)
    assert set(ds["kind"]) == {"short", "long"}
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["rows"] == len(ds)
    assert not (out / "final").exists()  # prepare-only never trains
    code = longscale_main(["finetune", "--model", "m", "--output", str(out), "--pack-length", "many"])
    assert code == 2 and "--pack-length" in capsys.readouterr().err
    # YAML spells the same settings; flags override it
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text(f"model: {tiny_llama_dir}\noutput: {tmp_path / 'from-yaml'}\npack-length: 128\n"
                         f"max_length: 512\nprepare_only: true\nshort_data: [{data['short_data'][0]}]\n")
    assert longscale_main(["finetune", "--config", str(yaml_file), "--pack-length", "192"]) == 0
    assert set(datasets.load_from_disk(str(tmp_path / "from-yaml" / "dataset"))["length"]) == {192}


def test_nothing_left_to_train_is_a_clear_error_and_keeps_the_stats(tmp_path, tiny_llama_dir):
    from finetune.run import demo_config
    from finetune.sources import DataError

    long_dir = write_long_dir(tmp_path / "gen", [4000, 5000])
    config = demo_config(str(tiny_llama_dir), [str(long_dir)], str(tmp_path / "out"), max_length=256)
    assert config.lora_r and config.max_steps <= 4
    with pytest.raises(DataError, match="nothing to train on.*dropped: 2"):
        run_finetune(config)
    assert json.loads((tmp_path / "out" / "dataset_stats.json").read_text())["overlong_dropped"] == 2


def test_per_layer_compile_trains_like_eager(tmp_path, tiny_llama_dir, data):
    """`--torch-compile layers` compiles every decoder layer and changes nothing but speed (same losses)."""
    torch.set_num_threads(2)
    losses = {}
    for mode in ("off", "layers"):
        config = cfg(tmp_path / mode, tiny_llama_dir, data, max_steps=3, torch_compile=mode)
        tokenizer = load_tokenizer(config.model)
        rows, _ = assemble_rows(config, tokenizer)
        trainer = build_trainer(config, to_dataset(rows), tokenizer)
        layers = trainer.model.model.layers
        assert all((layer._compiled_call_impl is not None) == (mode == "layers") for layer in layers)
        trainer.train()
        losses[mode] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses["off"]) == 3
    assert losses["layers"] == pytest.approx(losses["off"], rel=1e-4)


def test_selective_checkpointing_recomputes_every_nth_layer_and_trains_alike(tmp_path, tiny_llama_dir, data):
    """`--ckpt-every-layers 2`: layer 0 recomputes, layer 1 keeps its activations; the losses are those of no
    checkpointing (recomputation changes memory, not the function)."""
    torch.set_num_threads(2)
    losses = {}
    for name, kw in {"none": dict(gradient_checkpointing=False),
                     "every2": dict(gradient_checkpointing=True, ckpt_every_layers=2)}.items():
        config = cfg(tmp_path / name, tiny_llama_dir, data, max_steps=2, **kw)
        tokenizer = load_tokenizer(config.model)
        rows, _ = assemble_rows(config, tokenizer)
        trainer = build_trainer(config, to_dataset(rows), tokenizer)
        flags = [layer.gradient_checkpointing for layer in trainer.model.model.layers]
        assert flags == ([True, False] if name == "every2" else [False, False])
        assert trainer.args.gradient_checkpointing is False  # the Trainer would turn every layer on
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses["every2"] == pytest.approx(losses["none"], rel=1e-5)


def test_attention_kernel_flag_reaches_the_model(tmp_path, tiny_llama_dir, data):
    """`--attn-implementation flash` (SDPA's flash backend through our registered function) trains on CPU; `cudnn`
    on a machine without it is a clear error before any training."""
    config = cfg(tmp_path, tiny_llama_dir, {"long_data": data["long_data"]}, max_steps=1, attn_implementation="flash")
    tokenizer = load_tokenizer(config.model)
    rows, _ = assemble_rows(config, tokenizer)
    trainer = build_trainer(config, to_dataset(rows), tokenizer)
    assert trainer.model.config._attn_implementation == "longscale_fa2"
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cudnn needs a CUDA GPU"):
            build_trainer(config.model_copy(update={"attention": config.attention.model_copy(update={"attn_implementation": "cudnn"})}), to_dataset(rows), tokenizer)
