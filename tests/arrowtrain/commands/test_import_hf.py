"""arrowtrain import-hf: a tiny random transformers GPT-2 / Llama, saved with
save_pretrained, becomes our export format (load_exported rebuilds it, logits within 1e-4);
sharded checkpoints work; configs we cannot reproduce and pickle-only folders are refused with
the field or file named, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from arrowtrain.commands.import_hf import main
from pretrain.interop.export import load_exported

V, T = 100, 32
GPT2 = dict(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=4,
            activation_function="gelu", layer_norm_epsilon=1e-6)
LLAMA = dict(vocab_size=V, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T,
             rope_theta=1234.0, rms_norm_eps=1e-5)


@pytest.fixture(autouse=True)
def _keep_caplog(monkeypatch):
    """main() configures logging once per process, replacing the root logger's handlers (and
    caplog's with them) when it is the first to: keep it from doing so in these tests."""
    monkeypatch.setattr("pretrain.logs._CONFIGURED", True)


def hf_model(kind: str, **update):
    """A random transformers model whose every parameter is off its init."""
    import transformers  # a dev dependency; not at collection, which every xdist worker runs
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**GPT2, **update}) if kind == "gpt2" else \
        transformers.LlamaConfig(**{**LLAMA, **update})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("kind, update", [
    ("gpt2", {}), ("gpt2", dict(tie_word_embeddings=False, activation_function="relu")),
    ("gpt2", dict(activation_function="gelu_new")),  # OpenAI's GPT-2 -> our gelu_tanh
    ("gpt2", dict(activation_function="gelu_pytorch_tanh")),
    ("llama", {}), ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                  num_key_value_heads=1, hidden_act="gelu")),
])
def test_imported_model_gives_the_hf_logits(kind, update, tmp_path):
    hf = hf_model(kind, **update)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ours.safetensors"
    assert main([str(tmp_path / "hf"), "--out", str(out)]) == 0
    ours = load_exported(out)  # the config from the metadata; strict load
    expected_position = "learned" if kind == "gpt2" else "rope"
    assert ours.cfg.position == expected_position
    assert ours.cfg.tie_embeddings == hf.config.tie_word_embeddings
    if "gelu_" in update.get("activation_function", ""):
        assert ours.cfg.activation == "gelu_tanh"
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert (ours(x)["logits"] - hf(x).logits).abs().max() < 1e-4


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert main([str(tmp_path / "hf"), "--out", str(tmp_path / "o.safetensors")]) == 0
    x = torch.randint(0, V, (1, T))
    with torch.no_grad():
        got = load_exported(tmp_path / "o.safetensors")(x)["logits"]
        assert (got - hf(x).logits).abs().max() < 1e-4


def _refused(tmp_path, caplog, hf_dir) -> str:
    out = tmp_path / "never.safetensors"
    assert main([str(hf_dir), "--out", str(out)]) == 2
    assert not out.exists()
    return caplog.text


@pytest.mark.parametrize("kind, update, named", [
    ("gpt2", dict(activation_function="quick_gelu"), "activation_function='quick_gelu'"),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_type"),
    ("llama", dict(hidden_act="relu"), "hidden_act='relu'"),
])
def test_configs_we_cannot_reproduce_are_refused_by_name(kind, update, named, tmp_path, caplog):
    hf_model(kind).save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    config.update(update)
    if "rope_scaling" in update:  # transformers >= 5 writes it as rope_parameters
        config["rope_parameters"] = {**config.get("rope_parameters", {}), **update["rope_scaling"]}
    path.write_text(json.dumps(config))
    assert named in _refused(tmp_path, caplog, tmp_path / "hf")


def test_other_model_types_and_missing_configs_are_refused(tmp_path, caplog):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "model_type='bert'" in _refused(tmp_path, caplog, tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    assert "config.json: no such file" in _refused(tmp_path, caplog, tmp_path / "empty")
    missing = _refused(tmp_path, caplog, tmp_path / "nothing")
    assert "nothing: no such folder" in missing and "hf download" not in missing  # not a Hub id


def test_a_pickle_only_folder_is_refused_unread(tmp_path, caplog):
    hf_model("gpt2").save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.rename(tmp_path / "hf" / "pytorch_model.bin")  # never opened: the name decides
    text = _refused(tmp_path, caplog, tmp_path / "hf")
    assert "pytorch_model.bin" in text and "never loaded" in text


# ---- issue 19 items 2 and 4: outputs never replace devices; absurd or malformed inputs are
# refused by name before anything is built (device nodes made here with mknod, never the
# machine's) ----------------------------------------------------------------------------------

def _saved(tmp_path, kind="gpt2") -> os.PathLike:
    hf_model(kind).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _edit_config(hf_dir, **update):
    path = hf_dir / "config.json"
    config = {**json.loads(path.read_text()), **update}
    for key in [k for k, v in update.items() if v is DROP]:
        del config[key]
    path.write_text(json.dumps(config))


DROP = object()


def test_out_that_is_a_device_or_fifo_is_refused_and_left_as_it_was(tmp_path, caplog):
    hf_dir = _saved(tmp_path)
    null, fifo = tmp_path / "null", tmp_path / "fifo"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(fifo)
    for node, kind, test in ((null, "character device", stat.S_ISCHR),
                             (fifo, "FIFO", stat.S_ISFIFO)):
        assert main([str(hf_dir), "--out", str(node)]) == 2
        assert f"--out {node} is a {kind}" in caplog.text
        assert test(os.stat(node).st_mode)  # still the node, not a regular file


def test_the_written_file_gets_the_umask_mode_not_0600(tmp_path):
    hf_dir = _saved(tmp_path)
    old = os.umask(0o002)
    try:
        assert main([str(hf_dir), "--out", str(tmp_path / "o.safetensors")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.safetensors").stat().st_mode) == 0o664


@pytest.mark.parametrize("update, named", [
    (dict(n_layer=100000), "declares 100000 layers but the weights hold only"),
    (dict(n_layer=1e30), "n_layer: 1e+30 is not an integer"),
    (dict(n_positions=10**12), "n_positions: 1000000000000 is outside 1.."),
    (dict(vocab_size=1 << 24), "tok_emb.weight: file [100, 32], config [16777216, 32]"),
    (dict(n_embd=DROP), "n_embd: missing"),
    (dict(n_layer=None), "n_layer: null is not an integer"),
    (dict(n_head="4"), 'n_head: "4" is not an integer'),
    (dict(n_embd=[32]), "n_embd: [32] is not an integer"),
    (dict(n_layer=True), "n_layer: true is not an integer"),
    (dict(layer_norm_epsilon="x"), 'layer_norm_epsilon: "x" is not a finite number'),
    (dict(activation_function=["gelu"]), 'activation_function: ["gelu"] is not a string'),
])
def test_absurd_or_malformed_config_fields_are_named_before_building(update, named, tmp_path,
                                                                     caplog):
    hf_dir = _saved(tmp_path)
    _edit_config(hf_dir, **update)
    text = _refused(tmp_path, caplog, hf_dir)
    assert named in text and "Traceback" not in text


def test_malformed_llama_objects_are_named(tmp_path, caplog):
    hf_dir = _saved(tmp_path, "llama")
    _edit_config(hf_dir, rope_parameters=[1, 2], num_key_value_heads="2")
    text = _refused(tmp_path, caplog, hf_dir)
    assert "rope_parameters: [1, 2] is not an object" in text
    assert 'num_key_value_heads: "2" is not an integer' in text


def test_a_weight_map_list_and_a_non_safetensors_file_are_named(tmp_path, caplog):
    hf_model("llama").save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    index = tmp_path / "hf" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": ["model-00001-of-00002.safetensors"]}))
    assert "weight_map is a JSON list" in _refused(tmp_path, caplog, tmp_path / "hf")
    hf_dir = _saved(tmp_path / "two")
    (hf_dir / "model.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
    assert f"{hf_dir / 'model.safetensors'}: not a readable safetensors file" in \
        _refused(tmp_path, caplog, hf_dir)


@pytest.mark.parametrize("node", ["fifo", "zero"])
def test_a_fifo_or_dev_zero_as_config_json_is_refused_at_once(node, tmp_path, caplog):
    hf_dir = _saved(tmp_path)
    config = hf_dir / "config.json"
    config.unlink()
    if node == "fifo":
        os.mkfifo(config)  # reading it would block forever
    else:
        os.mknod(config, 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # never ends
    kind = "a FIFO (named pipe)" if node == "fifo" else "a character device"
    assert f"{config} is {kind}, not a JSON file" in _refused(tmp_path, caplog, hf_dir)


@pytest.mark.parametrize("change, named", [
    (lambda t: t.to(torch.int8), "(I8)"), (lambda t: t > 0, "(BOOL)"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN or infinite"),
])
def test_integer_bool_and_nan_weights_are_refused(change, named, tmp_path, caplog):
    hf_dir = _saved(tmp_path)
    weights = hf_dir / "model.safetensors"
    tensors = load_file(str(weights))
    key = "transformer.h.0.mlp.c_fc.weight"
    tensors[key] = change(tensors[key]).contiguous()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    text = _refused(tmp_path, caplog, hf_dir)
    assert named in text and ("c_fc" in text)


def test_a_llama_folder_is_continued_on_text_sharded_with_its_own_tokenizer(tmp_path):
    """Issue 18 item 2: a Llama folder as transformers saves it (LlamaTokenizerFast: `</s>`,
    `<s>` added by its template, no <|endoftext|>) imports, its tokenizer.json shards text with
    EOS `</s>` and each document starting with `<s>` — the ids transformers gives — and a run
    config continuing the imported model on that folder passes the pre-flight."""
    import transformers

    from data_tools.folder import read_manifest
    from pretrain.train.preflight import check_run
    from tests.data_tools.dt_util import (
        REPO,
        SENTENCES,
        cli,
        llama_tokenizer,
        shard_rows,
        write_jsonl,
    )

    hf_dir = tmp_path / "hf"
    hf_tok = transformers.LlamaTokenizerFast(
        tokenizer_file=str(llama_tokenizer(tmp_path / "tok")), bos_token="<s>",
        eos_token="</s>", unk_token="<unk>")
    hf_model("llama", vocab_size=len(hf_tok), hidden_size=64, intermediate_size=176,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rope_theta=10000.0).save_pretrained(hf_dir)
    hf_tok.save_pretrained(hf_dir)
    assert main([str(hf_dir), "--out", str(tmp_path / "llama.safetensors")]) == 0
    texts = [f"{a} {b}" for a in SENTENCES for b in SENTENCES[:24]]  # ~18k tokens
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    data = tmp_path / "data"
    assert cli("shard", corpus, "--tokenizer", hf_dir / "tokenizer.json", "--out", data,
               "--workers", "1", "--val-fraction", "0.2") == 0
    info = read_manifest(data).tokenizer
    assert (info.eos_id, info.bos_id, info.bos_prepended) == (
        hf_tok.eos_token_id, hf_tok.bos_token_id, True)
    assert sorted(shard_rows(data)) == sorted(hf_tok(t).input_ids for t in texts)
    run = tmp_path / "run.yaml"
    run.write_text((REPO / "configs" / "gpt-tiny.yaml").read_text().replace(
        "base: model/gpt-tiny.yaml", f"base: {REPO / 'configs' / 'model' / 'llama-tiny.yaml'}"))
    cfg = check_run(run, [f"data.path={data}", f"init_from={tmp_path / 'llama.safetensors'}",
                          "model.vocab_size=null"], world_size=2)
    assert cfg.model.vocab_size == len(hf_tok)
