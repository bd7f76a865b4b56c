"""`medssl serve RUN_DIR [--host 127.0.0.1] [--port 8000] [--token-file F] [--workers 2]`: load once, then serve.

The token comes from --token-file or the MEDSSL_TOKEN environment variable, never from the command line (it would
sit in the shell history and the process list) and is never logged. A --host that is not loopback is refused
without a token. Cheap checks (host, token, port) run before the models load.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from medssl.errors import MedsslError

TOKEN_ENV = "MEDSSL_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        raise MedsslError(f"--host {host!r}: not an address or a name this machine can resolve") from None
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def read_token(token_file: str | None) -> str | None:
    """The API token of --token-file (its first line) or MEDSSL_TOKEN; None when neither is set."""
    if token_file:
        p = Path(token_file)
        try:
            text = p.read_text().strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise MedsslError(f"--token-file {p}: cannot be read ({type(e).__name__})") from None
        if not text or len(text[0].strip()) < 16:
            raise MedsslError(f"--token-file {p}: the token must be at least 16 characters on its first line")
        return text[0].strip()
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env and len(env) < 16:
        raise MedsslError(f"{TOKEN_ENV}: the token must be at least 16 characters")
    return env or None


def run_serve(run: str, host: str = "127.0.0.1", port: int = 8000, token_file: str | None = None,
              workers: int = 2, max_upload_mb: int = 20, threads: int | None = None, pacs_url: str | None = None,
              pacs_auth_file: str | None = None, pacs_ca_bundle: str | None = None,
              pacs_timeout: float = 30.0) -> int:
    """Check, load, serve until interrupted."""
    if not 0 <= port <= 65535:
        raise MedsslError(f"--port {port}: must lie in 0..65535")
    if workers < 1:
        raise MedsslError(f"--workers {workers}: must be at least 1")
    if max_upload_mb < 1:
        raise MedsslError(f"--max-upload-mb {max_upload_mb}: must be at least 1")
    token = read_token(token_file)
    if not is_loopback(host) and token is None:
        raise MedsslError(f"--host {host}: not a loopback address; serving beyond this machine needs an API token "
                          f"(--token-file FILE or {TOKEN_ENV})")
    if not Path(run).exists():
        raise MedsslError(f"{run}: no such run folder or file")
    pacs = None
    if pacs_url:
        from medssl.pacs.client import connect

        pacs = connect(pacs_url, auth_file=pacs_auth_file, ca_bundle=pacs_ca_bundle, timeout=pacs_timeout)
    import torch
    import uvicorn

    from medssl.serve.app import create_app
    from medssl.serve.engine import load_engine

    torch.set_num_threads(threads or max(1, min(4, os.cpu_count() or 1)))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("medssl.audit").setLevel(logging.INFO)
    engine = load_engine(run)
    app = create_app(engine, token=token, max_bytes=max_upload_mb * 2 ** 20, workers=workers, pacs=pacs)
    parts = [k for k in ("classifier", "generator", "retrieval", "similar_cases") if k in engine.describe()]
    if pacs is not None:
        parts.append(f"studies of the PACS {pacs.url}")
    print(f"medssl serve: {', '.join(parts)} from {run}; http://{host}:{port}/ "
          f"({'token required' if token else 'no token: loopback only'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0
