"""Warm stage processes: `python -m llmshrink.warm dvc repro ...` runs the command beside a server that imports
torch, transformers, peft and lm-eval once; each `python -m stages.<name>` the command starts hands its arguments,
working directory, environment and standard streams to the server (stages/__init__.py) and exits with the status
of a fork of the server that runs the stage. A stage then starts without seconds of imports: about 5 s a stage on
a laptop CPU, 12 s on a GPU machine, some 20 stages a DAG.

What runs is the stage as it is on disk: only third-party libraries are preloaded, so `stages` and `llmshrink`
import fresh in every fork, and an edited dependency takes effect. Libraries that start threads at import
(gptqmodel, pandas' pyarrow) are not preloaded, and nothing touches CUDA before the fork. Environment variables a
preloaded library reads at import (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS) take the values the command starts with.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress

ENV = "LLMSHRINK_WARM"
PRELOAD = ("torch", "torch._inductor.compile_fx", "transformers.models.llama.modeling_llama", "peft",
           "lm_eval.models.huggingface", "safetensors.torch")
PR_SET_PDEATHSIG = 1  # prctl(2)
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
STOP_GRACE = 10.0  # seconds a stopped stage has to clean up after its interrupt, before it is killed


def delegate(path: str, module: str, args: list[str]) -> None:
    """Run `python -m module args` in the server listening at `path` and exit with its status; return (the caller
    then runs the stage itself) when no server answers there."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as error:
        print(f"{ENV}={path}: no warm server ({error}); running cold", file=sys.stderr)
        conn.close()
        return
    body = json.dumps({"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    try:
        socket.send_fds(conn, [len(body).to_bytes(8, "big")], [0, 1, 2])
        conn.sendall(body)
        started = conn.recv(1)  # the server forked the stage
    except OSError:
        started = b""
    if not started:  # e.g. the server refused to serve after its preload (see `serve`)
        print(f"{ENV}={path}: the warm server did not take the stage; running cold", file=sys.stderr)
        conn.close()
        return
    status = b"".join(iter(lambda: conn.recv(16), b""))
    sys.exit(int(status) if status else 1)


def run_stage(request: dict, fds: list[int]) -> int:
    """In the fork: take over the client's streams, directory and environment, and run its module as __main__."""
    os.setpgid(0, 0)  # the server stops this group if the client goes away,
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # and the kernel kills the stage if the server dies
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    for name in [m for m in sys.modules if m.split(".")[0] == "llmshrink"]:  # import the stage's own checkout
        del sys.modules[name]
    os.environ.clear()
    os.environ.update({k: v for k, v in request["env"].items() if k != ENV})
    sys.path[0] = request["cwd"]
    sys.argv = [request["module"], *request["args"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:  # as the interpreter treats it: None is 0, a message is printed and is 1
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception (the stage's hook), exit status 1
        sys.excepthook(*sys.exc_info())
        code = 1
    return code


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal that killed the process."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def stop(pid: int) -> int:
    """Stop the stage as Ctrl-C stops a cold one: interrupt its process group (KeyboardInterrupt, so its `finally`
    blocks remove partial outputs and scratch folders), and kill the group if it still runs after STOP_GRACE s."""
    os.killpg(pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return exit_code(status)
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    return exit_code(os.waitpid(pid, 0)[1])


class Stopping:
    """The server's SIGTERM (the runner ending, or a timeout's signal to the process group): exit at once when no
    stage runs, else stop the stage first."""

    requested = False
    busy = False

    @classmethod
    def on_sigterm(cls, *_: object) -> None:
        cls.requested = True
        if not cls.busy:
            sys.exit(128 + signal.SIGTERM)


def wait_or_stop(pid: int, conn: socket.socket) -> int:
    """The stage's exit status; `stop` it when its client disconnects or the server is told to end."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return exit_code(status)
        gone = select.select([conn], [], [], 0.05)[0] and not conn.recv(1, socket.MSG_PEEK)
        if gone or Stopping.requested:
            return stop(pid)


def forks_can_use_cuda() -> bool:
    """Whether a fork of this process can still use a GPU: torch forbids it once CUDA's driver was asked anything."""
    pid = os.fork()
    if pid == 0:
        import torch

        os._exit(int(getattr(torch._C, "_cuda_isInBadFork", lambda: False)() and torch.cuda.device_count() > 0))
    return exit_code(os.waitpid(pid, 0)[1]) == 0


def serve(sock: socket.socket) -> None:
    """Preload, then run one stage at a time, each in a fork."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C ends the command and its clients; the stage then ends too
    signal.signal(signal.SIGTERM, Stopping.on_sigterm)
    # libraries that ask torch.cuda.is_available() at import: through NVML, which leaves forks free to use the GPU
    os.environ.setdefault(NVML_CHECK, "1")
    for name in PRELOAD:
        __import__(name)
    import torch

    if torch.cuda.is_initialized() or threading.active_count() > 1 or not forks_can_use_cuda():
        raise RuntimeError(f"warm server: a preloaded module ({', '.join(PRELOAD)}) started a thread or asked CUDA's "
                           "driver, so a fork could not use the GPU; stages run cold")
    while True:
        conn, _ = sock.accept()
        with conn:
            head, fds, _, _ = socket.recv_fds(conn, 8, 3)
            size, body = int.from_bytes(head, "big"), b""
            while len(body) < size:
                body += conn.recv(size - len(body))
            Stopping.busy = True
            pid = os.fork()
            if pid == 0:
                sock.close()
                code = run_stage(json.loads(body), fds)
                atexit._run_exitfuncs()  # what exit runs (compile workers, temporary folders, logging) but not its
                sys.stdout.flush()  # second or two of module teardown
                sys.stderr.flush()
                os._exit(code)
            for fd in fds:
                os.close(fd)
            with suppress(OSError):  # a client that is gone: wait_or_stop stops its stage
                conn.sendall(b"+")
            code = wait_or_stop(pid, conn)
            with suppress(OSError):
                conn.sendall(str(code).encode())
            Stopping.busy = False
            if Stopping.requested:
                sys.exit(128 + signal.SIGTERM)


def main(command: list[str]) -> int:
    """Run `command` with a warm server for its stages; its exit status."""
    if not command:
        sys.exit("usage: python -m llmshrink.warm COMMAND [ARGS...]   (e.g. dvc repro)")
    folder = tempfile.mkdtemp(prefix="llmshrink-warm-")  # not TemporaryDirectory: its exit hook would run in forks
    path = os.path.join(folder, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    runner = os.getpid()
    server = os.fork()
    if server == 0:  # stages that connect before the preload ends wait in the listen backlog
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the runner's end, `kill -9` too, ends the server
        try:
            if os.getppid() != runner:  # it ended before the line above
                sys.exit(128 + signal.SIGTERM)
            serve(sock)  # returns never
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    sock.close()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # to clean up below
    try:
        with subprocess.Popen(command, env={**os.environ, ENV: path}) as process:
            while True:
                try:
                    return process.wait()
                except KeyboardInterrupt:  # Ctrl-C reached the command too: let it end its own way (DVC does)
                    continue
                except SystemExit:  # SIGTERM: pass it on
                    process.terminate()
                    raise
    finally:
        os.kill(server, signal.SIGTERM)
        os.waitpid(server, 0)
        shutil.rmtree(folder, ignore_errors=True)  # the server's, unless it was killed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
