"""Describing a whole SAE: every latent without --features, dead latents skipped and listed in
OUT.skipped.json, a labels/s progress column, and --export straight to Neuronpedia and delphi formats."""

import json
import re
import sys
import types

import pytest
import torch

from selfie_adapters.cli import main
from selfie_adapters.testing import write_local_sae
from selfie_adapters.vectors.source import VectorSource

DEAD = (3, 7)


@pytest.fixture
def sae_lens_with_dead(monkeypatch):
    """A fake sae-lens whose SAE rel/layer_1 has 10 latents, 3 and 7 dead (zero decoder rows)."""
    W = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))  # (d_sae, d)
    W[list(DEAD)] = 0.0

    class FakeSAE:
        W_dec = W

        @classmethod
        def from_pretrained(cls, release, sae_id, device="cpu"):
            return cls()

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=FakeSAE))
    return W


def describe(model_dir, out, *extra):
    return main(["describe", "--model", str(model_dir), "--scale", "2", "--max-new-tokens", "3", "--batch-size", "4",
                 "--out", str(out), *map(str, extra)])


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_whole_sae_lens_sae_skips_and_lists_dead_latents(tiny_model_dir, tmp_path, capsys, sae_lens_with_dead):
    out = tmp_path / "labels.jsonl"
    with pytest.warns(UserWarning, match=r"skipping 2 zero dead latent\(s\).*\[3, 7\]"):
        assert describe(tiny_model_dir, out, "--vectors", "sae-lens:rel/layer_1") == 0
    err = capsys.readouterr().err
    assert [r["index"] for r in rows(out)] == [i for i in range(10) if i not in DEAD]
    skipped = json.loads((tmp_path / "labels.jsonl.skipped.json").read_text())
    assert skipped == {"what": "dead latent", "count": 2, "indices": [3, 7]}
    assert "skipped 2 zero dead latent(s): listed in" in err
    # a rerun resumes: nothing new, no duplicates, the list stays
    before = out.read_text()
    with pytest.warns(UserWarning, match="dead latent"):
        assert describe(tiny_model_dir, out, "--vectors", "sae-lens:rel/layer_1") == 0
    assert out.read_text() == before and (tmp_path / "labels.jsonl.skipped.json").is_file()


def test_whole_local_sae_file_resumes_without_duplicates(tiny_model_dir, tmp_path, capsys):
    sae = write_local_sae(tmp_path / "sae.safetensors", d=64, latents=12, layer=1, dead=DEAD)
    source = VectorSource.parse(sae)
    assert source.is_sae_file and source.row_name == "dead latent"
    W, kept = source.load()
    assert W.shape == (12, 64) and kept == list(range(12))
    full = tmp_path / "full.jsonl"
    with pytest.warns(UserWarning, match="dead latent"):
        assert describe(tiny_model_dir, full, "--vectors", sae) == 0
    ref = rows(full)
    assert [r["index"] for r in ref] == [i for i in range(12) if i not in DEAD]
    # killed after three rows, mid-write of the fourth: the rerun completes it, same rows, no duplicates
    part = tmp_path / "part.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:10])
    (tmp_path / "part.jsonl.settings.json").write_text((tmp_path / "full.jsonl.settings.json").read_text())
    with pytest.warns(UserWarning, match="dead latent"):
        assert describe(tiny_model_dir, part, "--vectors", sae) == 0
    assert rows(part) == ref
    # other SAE contents are other inputs: refused without --overwrite
    write_local_sae(sae, d=64, latents=12, layer=1)
    assert describe(tiny_model_dir, full, "--vectors", sae) == 2
    assert "error:" in capsys.readouterr().err
    # the same file with #KEY is a plain tensor file again
    assert not VectorSource.parse(f"{sae}#W_enc").is_sae_file


def test_export_writes_neuronpedia_and_delphi_like_labels_export(tiny_model_dir, tmp_path, capsys,
                                                                 sae_lens_with_dead):
    out, np_file, delphi_dir = tmp_path / "labels.jsonl", tmp_path / "np.jsonl", tmp_path / "delphi"
    with pytest.warns(UserWarning, match="dead latent"):
        assert describe(tiny_model_dir, out, "--vectors", "sae-lens:rel/layer_1", "--features", "0-5",
                        "--export", f"neuronpedia:{np_file}", "--export", f"delphi:{delphi_dir}",
                        "--export-set", "source=1-res-test", "--export-set", "module=layers.1") == 0
    err = capsys.readouterr().err
    assert "neuronpedia explanations" in err and "delphi explanations" in err
    written = rows(np_file)
    labelled = [r for r in rows(out) if r["label"].strip()]
    assert {r["index"] for r in written} == {str(r["index"]) for r in labelled}
    assert {r["layer"] for r in written} == {"1-res-test"}
    assert {r["explanationModelName"] for r in written} == {"selfie-untrained"}
    # the same as `selfie labels export` of the rows
    assert main(["labels", "export", str(out), "--format", "neuronpedia", "--out", str(tmp_path / "np2.jsonl"),
                 "--source", "1-res-test", "--explanation-model", "selfie-untrained"]) == 0
    assert (tmp_path / "np2.jsonl").read_text() == np_file.read_text()
    names = sorted(p.name for p in delphi_dir.iterdir())
    assert names == sorted(f"layers.1_latent{r['index']}.txt" for r in labelled)


@pytest.mark.parametrize("extra, message", [
    (["--export", "csv:x.csv"], r"unknown --export format 'csv'; choose neuronpedia or delphi"),
    (["--export", "neuronpedia"], r"--export takes FORMAT:PATH, got 'neuronpedia'"),
    (["--export-set", "colour=red"], r"--export-set takes KEY=VALUE with KEY one of model_id, source"),
])
def test_bad_export_flags_are_refused_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "labels.jsonl"
    assert describe("no-such-model", out, "--vectors", "sae-lens:rel/layer_1", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and re.search(message, err), err
    assert not out.exists()


def test_export_folder_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert describe("no-such-model", tmp_path / "o.jsonl", "--vectors", "sae-lens:rel/layer_1",
                    "--export", f"delphi:{tmp_path / 'taken'}") == 2
    assert "is a file; delphi writes a folder" in capsys.readouterr().err


def test_progress_hook_shows_labels_per_second():
    from rich.progress import Progress

    from selfie_adapters.cli.display import RateColumn, progress_hook

    with progress_hook("describing", unit="labels") as start:
        tick = start(10, 2)
        tick(4)
    column = RateColumn("labels")
    progress = Progress(column)
    task_id = progress.add_task("x", total=10)
    assert "labels/s" in column.render(progress.tasks[task_id]).plain
    progress.update(task_id, advance=5)
    assert column.render(progress.tasks[task_id]).plain.endswith("labels/s")
