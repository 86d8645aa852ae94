"""tpu/ launch scripts: every setting reaches the remote command as one literal word (never run by the remote
shell). gcloud and ssh are replaced by stand-ins that run the remote command string with bash, as a worker
would; a stand-in ``esjax`` records the arguments it receives."""

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

TPU = Path(__file__).resolve().parents[1] / "tpu"
HOSTILE = {
    "CONFIG": "configs/a b.yaml",
    "OUT": "/tmp/o; touch PWNED1 $(touch PWNED2) `touch PWNED3`",
    "EXTRA_ARGS": "--set model.path=~/m;touch${IFS}PWNED4 --set train.seed=1",
    "LOG_FILE": "log file;touch PWNED5",
}


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def worker(tmp_path):
    """A fake home with ~/esjax/.venv/bin/esjax (records its argv) and gcloud / ssh stand-ins on PATH."""
    home = tmp_path / "home"
    _executable(home / "esjax" / ".venv" / "bin" / "esjax",
                '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/argv.tmp" && mv "$HOME/argv.tmp" "$HOME/argv"\n')
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "gcloud", '#!/usr/bin/env bash\n'
                'for a in "$@"; do case "$a" in --command=*) exec bash -c "${a#--command=}";; esac; done\n'
                'echo my-project\n')
    _executable(bin_dir / "ssh", '#!/usr/bin/env bash\nexec bash -c "$2"\n')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home), "PROJECT": "p", **HOSTILE}
    return home, env


def _received(home: Path, env: dict, script: str, **extra) -> list[str]:
    proc = subprocess.run(["bash", str(TPU / script)], env={**env, **extra}, cwd=home, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for _ in range(200):  # the command was started in the background with nohup
        if (home / "argv").exists():
            break
        time.sleep(0.05)
    return (home / "argv").read_text().splitlines()


@pytest.mark.parametrize("script, extra", [("launch.sh", {}), ("launch.sh", {"RESUME": "1"}),
                                           ("launch_multigpu.sh", {"HOSTS": "gpu-a"})])
def test_settings_reach_esjax_as_literal_words(worker, tmp_path, script, extra):
    home, env = worker
    argv = _received(home, env, script, **extra)
    assert argv == ["train", HOSTILE["CONFIG"], "--out", HOSTILE["OUT"], "--no-progress",
                    *(["--resume"] if extra.get("RESUME") else []), *HOSTILE["EXTRA_ARGS"].split()]
    assert (home / HOSTILE["LOG_FILE"]).is_file()
    assert not [p for p in tmp_path.rglob("PWNED*")] and not list(Path.cwd().glob("PWNED*"))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(TPU.parent)) for p in TPU.iterdir() if p.suffix in (".sh", ".sbatch"))
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=TPU.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
