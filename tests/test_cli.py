"""Command-line errors: one line naming the problem and exit status 2, as argparse's own errors give, never a
traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _streamlib(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamlib", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def _in_process(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """``python -m streamlib ARGS`` run in this process (no interpreter start-up per case): its exit status and what
    it printed, as a subprocess would give them."""
    from streamlib.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def _one_line_error(proc: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"python -m streamlib {command}: error: ") and "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_the_real_command_exits_2_with_one_line():
    """Once through a real interpreter: the exit status and stderr a shell sees."""
    _one_line_error(_streamlib("run", "--profile", "nosuch"), "run", "profile must be one of", "'nosuch'")
    _one_line_error(_streamlib("generate", "--model", "micro", "--prompt", ""), "generate", "--prompt is empty")


@pytest.mark.parametrize("args, words", [
    (["--prompt-file", "/no/such/prompt.txt"], ["--prompt-file", "/no/such/prompt.txt", "No such file"]),
    (["--prompt", ""], ["--prompt is empty"]),
    (["--prompt", "  \n"], ["--prompt is empty"]),
    (["--model", "no-such-org/no-such-model", "--prompt", "Hi"], ["--model", "no-such-org/no-such-model",
                                                                  "python -m streamlib download"]),
    (["--model", "random:pythia-99m", "--prompt", "Hi"], ["--model", "architecture must be one of"]),
    (["--policy", "streamingllm:4+0", "--prompt", "Hi"], ["--policy", "window"]),
    (["--device", "tpu", "--prompt", "Hi"], ["--device"]),
    (["--keep", "header", "--prompt", "Hi"], ["--keep header needs --chat"]),
    (["--keep", "most", "--prompt", "Hi"], ["--keep must be 'header', 'sinks' or a number of tokens", "'most'"]),
    (["--keep", "300", "--policy", "streamingllm:4+60", "--prompt", "Hi"], ["--keep 300", "n_sink", "[0, 63]"]),
    (["--keep", "8", "--policy", "tova:64", "--prompt", "Hi"], ["--keep 8", "TOVA", "keeps no sinks"]),
])
def test_generate_errors_are_one_line(capsys, monkeypatch, args, words):
    model = () if "--model" in args else ("--model", "micro")
    _one_line_error(_in_process(capsys, monkeypatch, "generate", *model, *args), "generate", *words)


def test_generate_empty_prompt_file(capsys, monkeypatch, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line_error(_in_process(capsys, monkeypatch, "generate", "--model", "micro", "--prompt-file", str(empty)),
                    "generate", "is empty")
    _one_line_error(_in_process(capsys, monkeypatch, "generate", "--model", "micro", "--chat", "--prompt", "x"),
                    "generate", "--chat needs --interactive")


@pytest.mark.parametrize("text, words", [
    ("model: micro\nwindow: -3\n", ["window must be an integer >= 1", "-3"]),
    ("model: micro\nppl_tokens: lots\n", ["ppl_tokens", "'lots'"]),
    ("model: micro\nwindw: 12\n", ["unknown parameter 'windw'", "did you mean 'window'"]),
    ("model: micro\nsweep:\n  ppl_tokens: 64\n", ["ppl_tokens belongs in section 'baseline'"]),
    ("model: micro\nbase: nope\n", ["base must be one of"]),
    ("model: micro\nsweep:\n  sweep_cache_sizes: [64, -3]\ndry_run: true\n", ["sweep_cache_sizes", "-3"]),
    ("model: micro\nwindow: [\n", ["not valid YAML"]),
    ("- just\n- a list\n", ["must be a mapping"]),
])
def test_run_bad_profile_yaml(capsys, monkeypatch, tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    run_dir = tmp_path / "run"
    _one_line_error(_in_process(capsys, monkeypatch, "run", "--profile", str(path), "--run-dir", str(run_dir)), "run",
                    *words)
    assert not run_dir.exists()  # refused before anything was written


def test_run_unknown_notebook(capsys, monkeypatch, tmp_path):
    run_dir = tmp_path / "r"
    _one_line_error(_in_process(capsys, monkeypatch, "run", "--profile", "smoke", "--only", "09", "--run-dir",
                                str(run_dir)), "run", "only must name notebooks")
    assert not run_dir.exists()
