"""The warm stage runner: a stage handed to the server runs as its own `python -m stages.<name>` would (arguments,
directory, environment, streams, exit status), with the heavy libraries already imported, and it dies with its
client. (That a whole `dvc repro` through it writes byte-identical checkpoints: tests/test_pipeline.py.)"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = '''import os, sys, time
print("warm" if "transformers" in sys.modules else "cold", os.getcwd(), os.environ.get("PROBE_VALUE"),
      os.environ.get("LLMSHRINK_WARM"), sys.argv[1:])
print("to stderr", file=sys.stderr)
if sys.argv[1] == "sleep":  # as a stage writing its output: a partial folder that its `finally` removes
    os.mkdir("partial")
    try:
        open("stage.pid", "w").write(str(os.getpid()))
        time.sleep(120)
    finally:
        os.rmdir("partial")
sys.exit(int(sys.argv[1]))
'''


def probe_project(tmp_path: Path) -> Path:
    """A folder with this checkout's `stages` package hook and a probe stage."""
    (tmp_path / "stages").mkdir(parents=True)
    shutil.copy(ROOT / "stages" / "__init__.py", tmp_path / "stages" / "__init__.py")
    (tmp_path / "stages" / "probe.py").write_text(PROBE)
    return tmp_path


def warm_env() -> dict[str, str]:
    return {**os.environ, "PROBE_VALUE": "42", "PYTHONPATH": str(ROOT)}


def test_a_stage_runs_warm_with_its_arguments_directory_environment_streams_and_status(tmp_path: Path) -> None:
    project = probe_project(tmp_path)
    script = (f"{sys.executable} -m stages.probe 3 x; echo status $?; {sys.executable} -m stages.probe 0; "
              "echo status $?; echo $LLMSHRINK_WARM")
    done = subprocess.run([sys.executable, "-m", "llmshrink.warm", "bash", "-c", script], cwd=project,
                          env=warm_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *lines, socket = done.stdout.splitlines()
    assert lines == [f"warm {project} 42 None ['3', 'x']", "status 3", f"warm {project} 42 None ['0']", "status 0"]
    assert not Path(socket).parent.exists()  # the runner removed its socket folder
    assert done.stderr.count("to stderr") == 2
    cold = subprocess.run([sys.executable, "-m", "stages.probe", "0"], cwd=project, env=warm_env(),
                          capture_output=True, text=True, timeout=300)
    assert cold.stdout.startswith(f"cold {project} 42 None")


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGKILL, True),
                                        (signal.SIGKILL, False)])
def test_the_stage_ends_with_its_client(tmp_path: Path, sig: int, group: bool) -> None:
    """A signal to the runner's whole process group: SIGINT as Ctrl-C in a terminal sends it, SIGTERM and SIGKILL
    as a timeout does (gpu_pipeline sends SIGTERM, then SIGKILL); or `kill -9` of the runner alone. The stage ends
    with it. After SIGINT and SIGTERM it is interrupted as Ctrl-C interrupts a cold stage, so its `finally` blocks
    remove what it had half-written, and the socket folder is removed; so too after the runner alone is killed
    (the server gets SIGTERM as its parent dies, and stops); nothing can clean up after SIGKILL to the group."""
    project, temp = probe_project(tmp_path / "project"), tmp_path / "tmp"
    temp.mkdir()
    # SIGINT as in a terminal: a background job (nohup, CI) inherits it ignored, and so would the runner
    runner = subprocess.Popen([sys.executable, "-m", "llmshrink.warm", sys.executable, "-m", "stages.probe", "sleep"],
                              cwd=project, env={**warm_env(), "TMPDIR": str(temp)}, stdout=subprocess.DEVNULL,
                              start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid_file = project / "stage.pid"
    deadline = time.monotonic() + 240
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.2)
    stage = int(pid_file.read_text())
    (os.killpg if group else os.kill)(runner.pid, sig)
    runner.wait(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{stage}").exists() and Path(f"/proc/{stage}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the stage outlived its server"
        time.sleep(0.1)
    if not (sig == signal.SIGKILL and group):
        while list(temp.iterdir()):  # the server removes the socket folder as it ends
            assert time.monotonic() < deadline, "the server outlived its runner"
            time.sleep(0.1)
        assert not (project / "partial").exists()


def test_without_a_server_the_stage_runs_cold(tmp_path: Path) -> None:
    project = probe_project(tmp_path)
    done = subprocess.run([sys.executable, "-m", "stages.probe", "5"], cwd=project,
                          env={**warm_env(), "LLMSHRINK_WARM": str(tmp_path / "missing")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 5
    assert done.stdout.startswith("cold")
    assert "no warm server" in done.stderr


def test_a_server_that_closes_without_taking_the_stage_leaves_it_cold(tmp_path: Path, capsys) -> None:
    """As when the server refuses after its preload (a library poisoned forks for CUDA): the client returns, so
    the stage runs in its own process, instead of failing."""
    from llmshrink import warm

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "socket"))
    server.listen()

    def refuse() -> None:
        conn, _ = server.accept()
        for fd in socket.recv_fds(conn, 8, 3)[1]:
            os.close(fd)
        conn.close()

    thread = threading.Thread(target=refuse)
    thread.start()
    warm.delegate(str(tmp_path / "socket"), "stages.probe", ["0"])  # returns instead of exiting
    thread.join()
    assert "did not take the stage; running cold" in capsys.readouterr().err
