"""`xr0 serve`: a policy (checkpoint or built-in) behind the WebSocket server of app/serving/server.py.

    xr0 serve --policy PATH --host 127.0.0.1 --port 8765 [--token-file FILE]

The token comes from `--token-file FILE` or the environment variable XR0_POLICY_TOKEN, never argv (which
`ps` shows). The default address is loopback only; another address without a token is refused unless
`--insecure-no-token` says so.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from app.serving.server import TOKEN_ENV, PolicyServer

if TYPE_CHECKING:
    from app.compose.config import AppConfig

log = logging.getLogger(__name__)


# -- command line: `xr0 serve` ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default=None, help="checkpoint directory, or hold (default: policy.source)")
    p.add_argument("--host", default=None, help="address to bind (default: policy.server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: policy.server.port)")
    p.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the shared secret clients must send (or set {TOKEN_ENV}; never on the command line)",
    )
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # visible in `ps`: deprecated
    p.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="serve beyond this machine without a token: anyone who reaches the port can drive the robot",
    )


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def read_token(args: argparse.Namespace) -> str | None:
    """The shared secret: --token-file, else the environment; --token (visible to every user through
    `ps`) still works for one release, with a deprecation line."""
    from app.errors import UserError

    if args.token_file:
        try:
            token = open(args.token_file).read().strip()
        except OSError as e:
            raise UserError(f"--token-file {args.token_file}: {e.strerror}") from e
        if not token:
            raise UserError(f"--token-file {args.token_file} is empty")
        return token
    if args.token:
        log.warning(
            "--token on the command line is visible to every user (ps); use %s or --token-file", TOKEN_ENV
        )
        return args.token
    return os.environ.get(TOKEN_ENV) or None


def run(args: argparse.Namespace, config: AppConfig) -> int:
    from app.compose.policies import open_policy
    from app.errors import UserError

    server_cfg = config.policy.server
    source = args.policy or config.policy.source
    if source.startswith(("ws://", "wss://")):
        raise UserError(f"--policy {source}: xr0 serve serves a local policy, not another server")
    if source == "scripted":
        raise UserError(
            "--policy scripted cannot be served: the demonstrator needs the simulator's world; "
            "serve a checkpoint, or hold"
        )
    token = read_token(args)
    host = args.host or server_cfg.host
    if host not in LOOPBACK and token is None:
        if not args.insecure_no_token:
            raise UserError(
                f"--host {host} opens the policy to the network: set {TOKEN_ENV} or --token-file FILE "
                "(or, knowingly, --insecure-no-token)"
            )
        log.warning("serving on %s WITHOUT A TOKEN: anyone who can reach this port can drive the robot", host)
    policy = open_policy(source, config, rig=None)
    server = PolicyServer(
        policy,
        host,
        server_cfg.port if args.port is None else args.port,
        token,
        server_cfg.max_request_bytes,
        max_connections=server_cfg.max_connections,
        idle_timeout_s=server_cfg.idle_timeout_s,
        max_batch=server_cfg.max_batch,
        batch_window_ms=server_cfg.batch_window_ms,
    )
    spec = policy.spec
    print(
        f"xr0 serve: {source} (chunk {spec.chunk_length}, max prefix {spec.max_prefix}, cameras "
        f"{', '.join(spec.cameras) or 'none'}) on ws://{host}:{server.port}; Ctrl-C stops"
    )
    try:
        server.serve_forever()
    except OSError as e:
        raise UserError(f"could not listen on {host}:{server.port}: {e}") from e
    finally:
        print(f"xr0 serve: {server.served} requests answered, {server.rejected} rejected")
    return 0
