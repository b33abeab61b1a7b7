"""The agent benchmark's servers, each in its own process: the zero-latency OpenAI-compatible LLM
(``agent_bench.py --serve-llm``) and ``sessionkit serve`` with every service pointed at it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from tests.servers import wait_serving  # noqa: E402

MODEL = "bench-model"
#: The script that runs the LLM server with ``--serve-llm``.
BENCH = Path(__file__).resolve().with_name("agent_bench.py")


#: The zero-latency reply (unary) and the streamed one (8 pieces, spaced by --piece-delay).
REPLY = "Sure. Here is a short answer about that, based on what you told me before."
STREAM_PIECES = ["Here", " is", " a", " streamed", " answer", " in", " eight", " pieces."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_reachable(url: str) -> bool:
    rest = url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 5432)), timeout=1):
            return True
    except OSError:
        return False


# -- the LLM server process ---------------------------------------------------------------------------


def serve_llm(piece_delay: float) -> None:
    """``--serve-llm``: the scripted server answering every request with the fallback; prints its port
    and runs until stdin closes (the benchmark ends) or SIGTERM."""
    from tests.llm_server import LLMServer, Received, Reply

    server = LLMServer(model=MODEL)

    def fallback(request: Received) -> Reply:
        # Only the last request is needed (the fallback reads it): keep the record from growing.
        del server.requests[:-1]
        if isinstance(request.body, dict) and request.body.get("stream"):
            return Reply(content="".join(STREAM_PIECES), chunks=STREAM_PIECES, piece_delay=piece_delay)
        return Reply(content=REPLY)

    server.fallback = fallback
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.port, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


@dataclass
class Servers:
    llm: subprocess.Popen[bytes]
    sk: subprocess.Popen[bytes]
    llm_url: str
    address: str

    def stop(self) -> None:
        for proc in (self.sk, self.llm):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def start_servers(
    data_dir: Path, database_url: str, piece_delay: float, extra_env: dict[str, str]
) -> Servers:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    llm = subprocess.Popen(
        [sys.executable, str(BENCH), "--serve-llm", "--piece-delay", str(piece_delay)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert llm.stdout is not None
    llm_url = f"http://127.0.0.1:{int(llm.stdout.readline())}/v1"
    port = free_port()
    sk = subprocess.Popen(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(port), "--http-port", "0"],
        env={
            **{k: v for k, v in env.items() if not k.startswith(("SESSIONKIT_", "OPENAI_"))},
            "SESSIONKIT_DATA_DIR": str(data_dir),
            "SESSIONKIT_DATABASE_URL": database_url,
            "SESSIONKIT_LOG_LEVEL": "WARNING",
            "SESSIONKIT_LLM_BASE_URL": llm_url,
            "SESSIONKIT_LLM_MODEL": MODEL,
            "SESSIONKIT_LLM_API_KEY": "sk-bench",
            **extra_env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers = Servers(llm, sk, llm_url, f"127.0.0.1:{port}")
    try:
        wait_serving(servers.address, 180)
    except BaseException:
        servers.stop()
        raise
    return servers
