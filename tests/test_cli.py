"""The `selfie` CLI in-process: inspect, describe (+ resume), extract, mean, and bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from selfie_adapters import Adapter, build_projection, load_mean_vectors
from selfie_adapters.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_file({"v": torch.randn(3, 64)}, str(d / "vecs.safetensors"))
    Adapter(build_projection("scalar_affine", 64, init_scale=4.0), {"model_name": str(tiny_model_dir)}).save(
        d / "ad.safetensors")
    (d / "prompts.txt").write_text("Tell me about Paris.\nTell me about Rome.\nHi\n")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json(files, capsys):
    code, out, _ = run(capsys, "inspect", files / "ad.safetensors", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["projection_type"] == "scalar_affine" and info["model_dim"] == 64
    assert info["num_parameters"] == 65 and info["normalize_input"] is True and "model_name" in info


def describe_args(files, model_dir, out, *extra):
    return ("describe", "--model", model_dir, "--adapter", files / "ad.safetensors", "--vectors",
            files / "vecs.safetensors", "--max-new-tokens", 4, "--batch-size", 2, "--out", out, *extra)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_describe_writes_rows_and_resumes(files, tiny_model_dir, tmp_path, capsys):
    full = tmp_path / "full.jsonl"
    assert run(capsys, *describe_args(files, tiny_model_dir, full, "--scale", 1, "--scale", 2))[0] == 0
    ref = rows(full)
    assert len(ref) == 6 and set(ref[0]) >= {"index", "scale", "sample", "label", "text", "logprob"}
    # a kill after two rows, in the middle of writing the third
    part = tmp_path / "part.jsonl"
    text = full.read_text().splitlines(keepends=True)
    part.write_text("".join(text[:2]) + text[2][:15])
    (tmp_path / "part.jsonl.settings.json").write_text((tmp_path / "full.jsonl.settings.json").read_text())
    assert run(capsys, *describe_args(files, tiny_model_dir, part, "--scale", 1, "--scale", 2))[0] == 0
    got = rows(part)
    def key(r):
        return (r["index"], r["scale"], r["sample"])
    assert sorted(map(key, got)) == sorted(map(key, ref)) and len(got) == 6
    assert {key(r): r["text"] for r in got} == {key(r): r["text"] for r in ref}
    assert run(capsys, *describe_args(files, tiny_model_dir, part, "--scale", 1, "--scale", 2))[0] == 0
    assert len(rows(part)) == 6  # nothing left to do, nothing duplicated


def test_describe_interrupted_in_process(files, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from selfie_adapters.runs.row_log import JsonlLog

    out = tmp_path / "int.jsonl"
    real_append, calls = JsonlLog.append, {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_append(self, batch)

    monkeypatch.setattr(JsonlLog, "append", flaky)
    assert main([str(a) for a in describe_args(files, tiny_model_dir, out)]) == 130  # Ctrl-C
    assert len(rows(out)) == 2
    monkeypatch.setattr(JsonlLog, "append", real_append)
    assert run(capsys, *describe_args(files, tiny_model_dir, out))[0] == 0
    assert sorted(r["index"] for r in rows(out)) == [0, 1, 2]


def test_describe_baseline_and_changed_settings_refused(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "base.jsonl"
    args = ("describe", "--model", tiny_model_dir, "--vectors", files / "vecs.safetensors", "--scale", 3,
            "--max-new-tokens", 3, "--out", out)
    assert run(capsys, *args)[0] == 0
    before = out.read_text()
    code, _, err = run(capsys, *args[:-2], "--seed", 5, "--temperature", 1, "--out", out)
    assert code == 2 and "other inputs" in err and out.read_text() == before


def test_extract_and_mean(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    assert run(capsys, "extract", "--model", tiny_model_dir, "--layer", 1, "--layer", 2, "--prompts",
               files / "prompts.txt", "--chat", "--out", out)[0] == 0
    t = load_file(str(out))
    assert t["layer_1"].shape == (3, 64) and t["layer_2"].dtype == torch.float32
    mout = tmp_path / "mean-vectors.safetensors"
    assert run(capsys, "mean", "--model", tiny_model_dir, "--layer", 2, "--prompts", files / "prompts.txt",
               "--chat", "--out", mout)[0] == 0
    torch.testing.assert_close(load_mean_vectors(mout)[2], t["layer_2"].mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("missing_adapter", "file not found"),
    ("not_safetensors", "not a readable safetensors"),
    ("nan_vectors", "NaN/Inf"),
    ("wrong_dim", "d=32 but the model's hidden size is 64"),
    ("model_mismatch", "allow-model-mismatch"),
    ("bad_template", "does not contain the injection token"),
    ("bad_token", "tokenizer has no token"),
    ("missing_vectors", "vectors file not found"),
    ("mean_without_layer", "no layer_7"),
])
def test_bad_input_is_one_line_exit_2(case, message, files, tiny_model_dir, tmp_path, capsys):
    d = tmp_path
    out = d / "out.jsonl"
    adapter, vectors, extra = files / "ad.safetensors", files / "vecs.safetensors", []
    if case == "missing_adapter":
        adapter = d / "nope.safetensors"
    elif case == "not_safetensors":
        adapter = d / "junk.safetensors"
        adapter.write_text("junk")
    elif case == "nan_vectors":
        vectors = d / "nan.safetensors"
        save_file({"v": torch.full((2, 64), float("nan"))}, str(vectors))
    elif case == "wrong_dim":
        small = Adapter(build_projection("scalar_affine", 32), {"model_name": str(tiny_model_dir)})
        adapter = small.save(d / "a32.safetensors")
    elif case == "model_mismatch":
        other = Adapter(build_projection("scalar_affine", 64), {"model_name": "someone/else"})
        adapter = other.save(d / "o.safetensors")
    elif case == "bad_template":
        extra = ["--template", "What is this?"]
    elif case == "bad_token":
        extra = ["--template", "What is <|nope|>?", "--injection-token", "<|nope|>"]
    elif case == "missing_vectors":
        vectors = d / "none.pt"
    elif case == "mean_without_layer":
        save_file({"layer_19": torch.zeros(64)}, str(d / "mean.safetensors"))
        extra = ["--mean-vectors", d / "mean.safetensors", "--layer", 7]
    code, _, err = run(capsys, "describe", "--model", tiny_model_dir, "--adapter", adapter, "--vectors", vectors,
                       "--max-new-tokens", 2, "--out", out, *extra)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err.strip().splitlines()[-1]
    assert err.count("error") == 1 and "Traceback" not in err
    assert not list(d.glob("out.jsonl*"))  # nothing left behind: no rows, no record, no lock


def test_malicious_pt_vectors_exit_2(files, tiny_model_dir, tmp_path, capsys):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Boom()))
    code, _, err = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", evil, "--out", tmp_path / "o.jsonl")
    assert code == 2 and "refusing to unpickle" in err
    assert not (tmp_path / "PWNED").exists()


def test_help_everywhere(capsys):
    for cmd in ([], ["inspect"], ["describe"], ["extract"], ["mean"]):
        code, out, _ = run(capsys, *cmd, "--help")
        assert code == 0 and "Usage" in out
    assert "Example" in run(capsys, "describe", "--help")[1]


def test_extract_resumes_from_finished_chunks(files, tiny_model_dir, tmp_path, capsys):
    from torch.nn.modules.module import register_module_forward_pre_hook

    out = tmp_path / "v.safetensors"
    args = ("extract", "--model", tiny_model_dir, "--layer", 1, "--prompts", files / "prompts.txt", "--chunk", 1,
            "--out", out)
    passes = []  # one forward of the transformer per one-prompt chunk

    def count(kill_at: int | None):
        def hook(module, args):
            if type(module).__name__ == "LlamaModel":
                passes.append(1)
                if len(passes) == kill_at:
                    raise KeyboardInterrupt  # killed while computing the third chunk
        return register_module_forward_pre_hook(hook)

    handle = count(kill_at=3)
    try:
        assert run(capsys, *args)[0] == 130 and not out.exists()
    finally:
        handle.remove()
    assert len(list((tmp_path / "v.safetensors.parts").glob("*.safetensors"))) == 2
    passes.clear()
    handle = count(kill_at=None)
    try:
        assert run(capsys, *args)[0] == 0
    finally:
        handle.remove()
    assert len(passes) == 1  # only the unfinished chunk ran again
    assert not (tmp_path / "v.safetensors.parts").exists()
    full = tmp_path / "full.safetensors"
    assert run(capsys, *args[:-1], full)[0] == 0
    torch.testing.assert_close(load_file(str(out))["layer_1"], load_file(str(full))["layer_1"])


def test_describe_prompts_equals_extract_then_describe(files, tiny_model_dir, tmp_path, capsys):
    vecs = tmp_path / "v.safetensors"
    assert run(capsys, "extract", "--model", tiny_model_dir, "--layer", 2, "--prompts", files / "prompts.txt",
               "--chat", "--out", vecs)[0] == 0
    common = ("describe", "--model", tiny_model_dir, "--scale", 3, "--max-new-tokens", 3)
    assert run(capsys, *common, "--vectors", vecs, "--key", "layer_2", "--out", tmp_path / "a.jsonl")[0] == 0
    assert run(capsys, *common, "--prompts", files / "prompts.txt", "--layer", 2, "--chat",
               "--out", tmp_path / "b.jsonl")[0] == 0
    assert [r["text"] for r in rows(tmp_path / "a.jsonl")] == [r["text"] for r in rows(tmp_path / "b.jsonl")]
    code, _, err = run(capsys, *common, "--prompts", files / "prompts.txt", "--out", tmp_path / "c.jsonl")
    assert code == 2 and "--prompts needs --layer" in err
    code, _, err = run(capsys, *common, "--prompts", files / "prompts.txt", "--vectors", vecs, "--layer", 2,
                       "--out", tmp_path / "c.jsonl")
    assert code == 2 and "exactly one vector source" in err


def test_describe_relevancy_rows(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "rel.jsonl"
    assert run(capsys, *describe_args(files, tiny_model_dir, out, "--relevancy"))[0] == 0
    for r in rows(out):
        assert r["relevancy"] and all(isinstance(tok, str) and score >= 0 for tok, score in r["relevancy"])


def test_extract_positions(files, tiny_model_dir, tmp_path, capsys):
    base = ("extract", "--model", tiny_model_dir, "--layer", 1, "--prompts", files / "prompts.txt", "--raw")
    assert run(capsys, *base, "--out", tmp_path / "last.safetensors")[0] == 0
    assert run(capsys, *base, "--position", 0, "--position", -1, "--out", tmp_path / "two.safetensors")[0] == 0
    assert run(capsys, *base, "--position", 0, "--out", tmp_path / "first.safetensors")[0] == 0
    last, two = load_file(str(tmp_path / "last.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    first = load_file(str(tmp_path / "first.safetensors"))
    assert two["layer_1"].shape == (3, 2, 64) and first["layer_1"].shape == (3, 64)
    torch.testing.assert_close(two["layer_1"][:, 1], last["layer_1"])
    torch.testing.assert_close(two["layer_1"][:, 0], first["layer_1"])
    code, _, err = run(capsys, *base, "--position", 40, "--out", tmp_path / "bad.safetensors")
    assert code == 2 and "positions [40] do not fit" in err


def test_scale_takes_several_values_after_one_flag(files, tiny_model_dir, tmp_path, capsys):
    from selfie_adapters.cli import expand_multi_values

    got = expand_multi_values(["--scale", "1", "2.5", "--out", "x"])
    assert got == ["--scale", "1", "--scale", "2.5", "--out", "x"]
    assert expand_multi_values(["--scale", "1", "--scale", "2"]) == ["--scale", "1", "--scale", "2"]
    assert expand_multi_values(["--scale"]) == ["--scale"] and expand_multi_values(["--scale", "x"]) == ["--scale", "x"]
    out = tmp_path / "s.jsonl"
    assert run(capsys, "describe", "--model", tiny_model_dir, "--vectors", files / "vecs.safetensors", "--scale", 1, 3,
               "--max-new-tokens", 2, "--out", out)[0] == 0
    assert sorted({r["scale"] for r in rows(out)}) == [1.0, 3.0]


def test_label_end_flag_and_baseline_sweep(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "le.jsonl"
    args = ("describe", "--model", tiny_model_dir, "--vectors", files / "vecs.safetensors", "--max-new-tokens", 2,
            "--out", out)
    assert run(capsys, *args, "--label-end", "first-quote")[0] == 0
    assert json.loads((tmp_path / "le.jsonl.settings.json").read_text())["inputs"]["label_end"] == "first-quote"
    # no --scale with the untrained baseline: the reference's geometric sweep
    assert sorted({r["scale"] for r in rows(out)}) == [0.5, 0.8, 1.3, 2.1, 3.4, 5.5]
    code, _, err = run(capsys, *args[:-1], tmp_path / "x.jsonl", "--label-end", "middle")
    assert code == 2 and "last-quote" in err and "Traceback" not in err


def test_prompts_render_with_the_chat_template_by_default(files, tiny_model_dir, tmp_path, capsys):
    """As the reference (and the published mean vector): chat template + generation prompt unless --raw."""
    from selfie_adapters.testing import make_llama3_tokenizer
    from selfie_adapters.vectors.prompts import render_prompts

    base = ("extract", "--model", tiny_model_dir, "--layer", 1, "--prompts", files / "prompts.txt")
    for name, flag in (("default", ()), ("chat", ("--chat",)), ("raw", ("--raw",))):
        assert run(capsys, *base, *flag, "--out", tmp_path / f"{name}.safetensors")[0] == 0
    got = {n: load_file(str(tmp_path / f"{n}.safetensors")) for n in ("default", "chat", "raw")}
    torch.testing.assert_close(got["default"]["layer_1"], got["chat"]["layer_1"])
    assert not torch.allclose(got["default"]["layer_1"], got["raw"]["layer_1"])
    mean = tmp_path / "m.safetensors"
    assert run(capsys, "mean", "--model", tiny_model_dir, "--layer", 1, "--prompts", files / "prompts.txt",
               "--out", mean)[0] == 0
    torch.testing.assert_close(load_mean_vectors(mean)[1], got["chat"]["layer_1"].mean(0), atol=1e-5, rtol=1e-5)
    tok = make_llama3_tokenizer()
    ids = render_prompts(tok, ["Tell me about Paris."])[0]
    text = tok.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")  # Llama-3.1 system block
    assert text.endswith("Tell me about Paris.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_prompts(tok, ["Tell me about Paris."], chat=False)[0] == tok("Tell me about Paris.")["input_ids"]
