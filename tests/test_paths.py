"""Nothing the user gave us is lost: the output guard, atomic replacement, stale temporaries,
umask (slimgpt.paths, slimgpt.checkpoint, the CLI's --out / --report / oracle export)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from slimgpt import paths
from slimgpt.checkpoint import save_pretrained
from slimgpt.cli import main
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model

PRUNE = ["prune", "--model", "tiny-llama", "--ratio", "0.2", "--nsamples", "2", "--seqlen", "16",
         "--eval-tokens", "0", "--quiet", "--backend", "reference"]


@pytest.fixture
def model_dir(tmp_path):
    """A user's model folder, with a note of theirs beside it."""
    (tmp_path / "models").mkdir()
    save_pretrained(tiny_model("tiny-llama"), tmp_path / "models" / "m", byte_tokenizer())
    (tmp_path / "models" / "notes.txt").write_text("mine")
    return tmp_path / "models" / "m"


def _tree(folder):
    return {os.path.relpath(os.path.join(r, f), folder): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(folder) for f in fs}


@pytest.mark.parametrize("report", ["model/config.json", "model", "notes"])
def test_report_never_replaces_an_input_or_a_users_file(tmp_path, model_dir, capsys, report):
    """Issue: `--report m.gguf` replaced the input model with a JSON file."""
    before = _tree(model_dir.parent)
    target = {"model/config.json": model_dir / "config.json", "model": model_dir,
              "notes": model_dir.parent / "notes.txt"}[report]
    rc = main(PRUNE + ["--model", str(model_dir), "--out", str(tmp_path / "o"), "--report", str(target), "--force"])
    assert rc == 2 and "error" in capsys.readouterr().err
    assert _tree(model_dir.parent) == before and not (tmp_path / "o").exists()


def test_report_replaces_only_its_own_earlier_report(tmp_path, capsys):
    rep = tmp_path / "r.json"
    assert main(PRUNE + ["--out", str(tmp_path / "o1"), "--report", str(rep)]) == 0
    assert json.loads(rep.read_text())["format"] == "slimgpt-report"
    assert main(PRUNE + ["--out", str(tmp_path / "o2"), "--report", str(rep)]) == 2          # exists
    assert main(PRUNE + ["--out", str(tmp_path / "o2"), "--report", str(rep), "--force"]) == 0
    assert "report" in rep.read_text() or json.loads(rep.read_text())["command"] == "prune"


@pytest.mark.parametrize("out", ["link-to-model", "parent", "empty", "inside"])
def test_force_never_deletes_an_input(tmp_path, model_dir, capsys, out, monkeypatch):
    """Issue: --out through a symlink to the model, --out the model's parent, --out "" (the
    current folder) with --force deleted the user's files."""
    (tmp_path / "link-to-model").symlink_to(model_dir)
    monkeypatch.chdir(tmp_path)
    dest = {"link-to-model": "link-to-model", "parent": str(model_dir.parent), "empty": "",
            "inside": str(model_dir / "sub")}[out]
    before = _tree(tmp_path / "models")
    rc = main(PRUNE + ["--model", str(model_dir), "--out", dest, "--force"])
    assert rc == 2, capsys.readouterr()
    assert _tree(tmp_path / "models") == before


def test_force_never_deletes_a_folder_slimgpt_did_not_write(tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    assert main(PRUNE + ["--out", str(thesis), "--force"]) == 2
    assert (thesis / "thesis.tex").read_text() == "years of work"
    # a checkpoint the user added a file to is no longer only ours
    assert main(PRUNE + ["--out", str(tmp_path / "ck")]) == 0
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    assert main(PRUNE + ["--out", str(tmp_path / "ck"), "--force"]) == 2
    assert (tmp_path / "ck" / "notes.txt").exists()


def _kill_during_save(tmp_path, where):
    """Save over an existing checkpoint in a subprocess that dies (os._exit) at `where`."""
    script = textwrap.dedent(f"""
        import os, shutil
        from slimgpt import paths
        from slimgpt.checkpoint import save_pretrained
        from slimgpt.loaders.tiny import tiny_model
        m = tiny_model("tiny-gqa")
        if {where!r} == "after-exchange":
            shutil.rmtree = lambda *a, **k: os._exit(9)
            hook = None
        else:
            hook = lambda tmp: os._exit(9)
        save_pretrained(m, {str(tmp_path / "out")!r}, force=True, _before_rename=hook)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr


@pytest.mark.parametrize("where", ["before-rename", "after-exchange"])
def test_killed_force_replacement_leaves_a_whole_checkpoint_and_is_cleaned_next_time(tmp_path, where):
    from slimgpt.loaders import load_model

    old = save_pretrained(tiny_model("tiny-llama"), tmp_path / "out")
    _kill_during_save(tmp_path, where)
    # the destination is a whole checkpoint: the old one (tiny-llama, 8 heads) until the swap,
    # the new one (tiny-gqa, 9 heads) after it
    assert load_model(old).model is not None
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["num_attention_heads"] == {"before-rename": 8, "after-exchange": 9}[where]
    stale = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert stale, "the interrupted run leaves its hidden folder behind"
    save_pretrained(tiny_model("tiny-llama"), tmp_path / "out", force=True)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []     # cleaned on the next run


def test_files_follow_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = save_pretrained(tiny_model("tiny-llama"), tmp_path / "out")
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(out, "model.safetensors")).st_mode & 0o777 == 0o644


def test_oracle_export_never_replaces_a_users_folder(tmp_path):
    from slimgpt.oracle.cli import main as oracle_main
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("x")
    assert oracle_main(["export", str(mine), "--force"]) == 2
    assert (mine / "data.csv").read_text() == "x"


def test_check_output_rules(tmp_path):
    with pytest.raises(paths.OutputPathError, match="empty"):
        paths.check_output("  ")
    with pytest.raises(paths.OutputPathError, match="parent"):
        paths.check_output(tmp_path / "no" / "such" / "dir")
    (tmp_path / "f").write_text("x")
    with pytest.raises(paths.OutputPathError, match="not a folder"):
        paths.check_output(tmp_path / "f")
    assert paths.check_output(tmp_path / "new") == tmp_path / "new"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is missing")
@pytest.mark.parametrize("call", ["fsync", "renameat2"])
def test_prune_killed_in_its_final_save_phase_is_cleaned_next_time(tmp_path, call):
    """Issue: a kill at the first fsync of the save (after the partial marker was removed) left a
    full hidden `.out.tmp-*` folder that no later run removed. The kill is triggered by the call
    itself (strace, on entry to the call), not by a timer: at the first fsync, and at the --force
    swap (tests/test_save_faults.py kills at every call of a save)."""
    out = tmp_path / "out"
    assert main(PRUNE + ["--out", str(out)]) == 0
    before = _tree(out)
    cmd = ["strace", "-qq", "-o", os.devnull, "-e", f"trace={call}", "-e", f"inject={call}:signal=KILL:when=1",
           sys.executable, "-m", "slimgpt"] + PRUNE + ["--out", str(out), "--force", "--ratio", "0.3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if "ptrace" in proc.stderr:
        pytest.skip("strace may not trace here")
    assert proc.returncode == -9, proc.stderr[-2000:]                  # the kill was reached
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")], "the killed save left its temporary"
    assert _tree(out) == before                                        # killed on entry: before the swap
    assert main(PRUNE + ["--out", str(tmp_path / "out"), "--force"]) == 0
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
