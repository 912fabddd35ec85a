"""Usage errors of the `selfie` CLI: one `error:` line, exit 2, never a traceback; shared options."""

from __future__ import annotations

import pytest

from selfie_adapters.cli import main
from selfie_adapters.cli.options import parse_indices
from selfie_adapters.errors import SelfieError


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, message):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "No such command 'nosuch'"),
    (["describe", "--bogus-flag"], "No such option: --bogus-flag"),
    (["describe", "--out", "x.jsonl"], "Missing option '--model'"),
    (["eval", "loss", "--labels", "x.json"], "Missing option '--model'"),
    (["describe", "--model", "m", "--out", "o.jsonl", "--max-new-tokens", "many"], "--max-new-tokens"),
])
def test_usage_errors_are_one_line_exit_2(argv, message, capsys):
    assert_one_error_line(*run(capsys, *argv)[::2], message)


@pytest.mark.parametrize("command", [["describe", "--out", "o.jsonl", "--vectors", "v.pt"],
                                     ["extract", "--layer", "1", "--prompts", "p.txt", "--out", "o.safetensors"],
                                     ["eval", "loss", "--labels", "x.json", "--scale", "1"]])
def test_dtype_is_a_choice(command, capsys):
    code, _, err = run(capsys, *command, "--model", "m", "--dtype", "bfloat")
    assert_one_error_line(code, err, "'bfloat' is not one of 'auto', 'float32', 'bfloat16', 'float16'")


def test_bare_group_prints_help_without_error_line(capsys):
    code, out, err = run(capsys, "eval")
    assert code == 2 and "Usage" in out and "error" not in err


def test_parse_indices_names_the_flag():
    assert parse_indices("0,5,10-12", "--layers") == [0, 5, 10, 11, 12]
    with pytest.raises(SelfieError, match=r"--layers must look like '0,5,10-20', got '1-x'"):
        parse_indices("1-x", "--layers")
    with pytest.raises(SelfieError, match=r"--latents names no index"):
        parse_indices(",", "--latents")


def test_latents_error_names_latents_before_loading_anything(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "generation", "--model", tmp_path / "no-model", "--out", tmp_path / "g.jsonl",
                       "--adapter", "a.safetensors", "--latents", "x-1", "--sae-file", "s.safetensors")
    assert_one_error_line(code, err, "--latents must look like")


def test_cli_hides_hf_progress_bars_only_while_it_runs(capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    assert run(capsys, "nosuch")[0] == 2
    assert hf_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("command", [["describe"], ["extract"], ["train"], ["eval", "generation"],
                                     ["labels", "export"], ["serve"], ["experiment", "topics"]])
def test_help_fits_80_columns_with_room_for_the_text(command, capsys, monkeypatch):
    """At 80 columns each option's help keeps at least 40 characters a line, no option line runs past
    80, and --scale says its default."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    options = out.split("\nOptions:\n", 1)[1].splitlines()
    assert all(len(line) <= 80 for line in options), [line for line in options if len(line) > 80]
    # the help column starts where the first option's text does (click: after the option names)
    first = next(line for line in options if line.startswith("  --"))
    name_end = first.index("  ", 4)
    column = len(first) - len(first[name_end:].lstrip())
    assert 80 - column >= 40, first
    if command == ["describe"]:
        text = "\n".join(options)
        scale = text[text.index("  --scale"):text.index("  --vectors")]
        assert "default: 1 with an adapter" in " ".join(scale.split())
