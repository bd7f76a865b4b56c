"""Fixtures of the serve tests (a plain module, not a conftest: tests/conftest.py is imported by name elsewhere,
and a second conftest.py would shadow it). A tiny run folder to serve (a classifier bundle and an LSTM report run, untrained beyond a few steps: the tests
check the service, not the model) and a server started on a free loopback port in a subprocess, stopped after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory) -> Path:
    from medssl.data.preprocess import Preprocess
    from medssl.data.records import read_manifest
    from medssl.data.tasks import make_task
    from medssl.inference import save_bundle
    from medssl.models.classifier import Classifier
    from medssl.models.factory import ModelSpec, build_backbone
    from medssl.report.config import load_report_config
    from medssl.report.train import run_report_train

    from medssl.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("serve")
    manifest = write_synthetic(root / "data", 30, 32, seed=0, progress=False)
    run = root / "run"
    records = read_manifest(manifest)
    spec = ModelSpec(backbone="resnet18", stem="small", width=8, in_channels=1, image_size=32)
    torch.manual_seed(0)
    model = Classifier(build_backbone(spec), make_task(records, "multilabel"))
    save_bundle(run / "evaluate" / "tiny" / "bundles" / "finetune.pt", model, spec, Preprocess(32, 1),
                {"protocol": "finetune", "fraction": 1.0, "test_metrics": {"roc_auc_macro": 0.5}})
    cfg = load_report_config(Path("configs/report_lstm.yaml"), [
        "data.size=32", "encoder.width=8", "train.steps=4", "train.val_every=2", "decoder.dim=16",
        "decoder.context=40", "generate.max_len=20", "evaluate.meteor=false", "evaluate.n_boot=10",
        "evaluate.gallery=2", "train.batch_size=8"], data=str(manifest))
    run_report_train(cfg, run / "report" / "lstm", progress=False, meteor=None)
    return run


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a server started by a test, kill it if it has not gone within 20 s, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`medssl serve` in a subprocess on loopback; its stderr (the audit log) goes to a file."""

    def __init__(self, run: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._err = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "medssl.cli", "serve", str(run), "--port",
                                      str(self.port), "--threads", "1", *args],
                                     stdout=subprocess.DEVNULL, stderr=self._err, env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"medssl serve exited {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("medssl serve did not answer within 120 s")

    def stop(self) -> None:
        stop_process(self.proc)
        self._err.close()


@pytest.fixture(scope="module")
def server(serve_run, tmp_path_factory):
    s = Server(serve_run, tmp_path_factory.mktemp("log") / "serve.log", "--max-upload-mb", "1")
    yield s
    s.stop()


TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def token_server(serve_run, tmp_path_factory):
    s = Server(serve_run, tmp_path_factory.mktemp("log") / "serve.log", env={"MEDSSL_TOKEN": TOKEN})
    yield s
    s.stop()
