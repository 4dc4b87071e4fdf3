import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from sftbc.config import TinyModelArgs

torch.set_num_threads(2)

# A deliberately small version of the built-in student: same code path (tokenizer training, base
# pretraining, save_pretrained), a few seconds to build.
# Its corpus is not renamed: the tests' expected outputs were measured on this base (renaming is
# covered by tests/test_models.py).
TEST_TINY = TinyModelArgs(episodes=120, max_horizon=4, vocab_size=512, hidden=64, layers=2, heads=2,
                          max_positions=2048, epochs=1.0, max_tokens=4096, seed=0, renamed=0.0)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    from sftbc.models import build_tiny

    return str(build_tiny(TEST_TINY, out_dir=tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny(tiny_path):
    from sftbc.models import load_model, load_tokenizer

    return load_model(tiny_path), load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def lm_teacher(tmp_path_factory, tiny_path):
    """The test student after a little BC, merged: a different LM with the student's tokenizer."""
    from sftbc.bc import run_bc
    from sftbc.config import load_config

    d = tmp_path_factory.mktemp("teacher")
    run_bc(load_config(None, [f"runs_dir={d}", "name=t", f"model={tiny_path}", "collect.horizons=[2]",
                              "collect.episodes=20", "train.epochs=2", "train.min_steps=0", "lora.rank=8", "merge=true",
                              "eval.horizons=[2]", "eval.episodes=1", "eval.max_new_tokens=8"]))
    return str(d / "t" / "merged")


class JSONHandler(BaseHTTPRequestHandler):
    """Base of the local test servers (127.0.0.1): JSON in, JSON out, no request log."""

    def body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, obj, status: int = 200, headers: dict | None = None):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve(handler) -> tuple[str, ThreadingHTTPServer]:
    """Start `handler` on a free port of 127.0.0.1; returns its OpenAI-style base URL and the server."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd


def free_port() -> int:
    """A port of 127.0.0.1 free now (a fixed one can still be held by the previous launch or server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
