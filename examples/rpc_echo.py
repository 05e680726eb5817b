"""An RPC echo service with quicframe: server and client in one file.

Run the server in one terminal and the client in another::

    python examples/rpc_echo.py server            # listens on 127.0.0.1:4433
    python examples/rpc_echo.py client hello world

or both in one process (on a free port)::

    python examples/rpc_echo.py demo

The server makes a throwaway self-signed certificate on start and writes it to
``--cert-dir`` (default: a folder in the system temp directory); the client
trusts that file.  Never do this in production: use a real certificate.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

import quicframe
from quicframe.middleware import log_calls
from quicframe.testing import write_self_signed_certificate

ECHO = 0x0001
DEFAULT_CERT_DIR = Path(tempfile.gettempdir()) / "quicframe-rpc-echo"


@dataclass
class EchoRequest:
    text: str
    repeat: int = 1


@dataclass
class EchoReply:
    text: str
    request_id: str


router = quicframe.Router(middleware=[log_calls()])


@router.rpc(ECHO, request=EchoRequest, response=EchoReply)
async def echo(request: EchoRequest, ctx: quicframe.CallContext) -> EchoReply:
    """Echo the text back, ``repeat`` times."""
    if not 1 <= request.repeat <= 100:
        raise quicframe.errors.InvalidArgument("repeat must be 1..100", details={"max": 100})
    return EchoReply(text=" ".join([request.text] * request.repeat), request_id=ctx.request_id)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a throwaway self-signed certificate for localhost into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_self_signed_certificate(folder, "localhost")


async def run_server(host: str, port: int, cert_dir: Path) -> None:
    cert, key = make_certificate(cert_dir)
    config = quicframe.ServerConfig(certificate=cert, private_key=key)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(quicframe.serve, router, host, port, config)
        print(f"serving on {host}:{server.port} (certificate: {cert})", flush=True)


async def run_client(host: str, port: int, ca_file: Path, words: list[str]) -> None:
    config = quicframe.ClientConfig(ca_file=ca_file, server_name="localhost")
    async with quicframe.connect(host, port, config) as client:
        with trio.fail_after(2):
            reply = await client.call(
                ECHO, EchoRequest(text=" ".join(words) or "hello", repeat=2), response=EchoReply
            )
        print(f"{reply.text!r} (request id {reply.request_id})")
        try:
            await client.call(ECHO, EchoRequest(text="x", repeat=0))
        except quicframe.errors.InvalidArgument as exc:
            print(f"refused as expected: {exc.message} {exc.details}")
        print(f"rtt {await client.ping() * 1000:.2f} ms; {client.statistics()}")


async def run_demo(cert_dir: Path) -> None:
    cert, key = make_certificate(cert_dir)
    server_config = quicframe.ServerConfig(certificate=cert, private_key=key)
    async with quicframe.open_server(router, "127.0.0.1", 0, server_config) as server:
        await run_client("127.0.0.1", server.port, cert, ["hello", "quicframe"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="run the echo server until Ctrl-C")
    client = commands.add_parser("client", help="call the echo server once")
    demo = commands.add_parser("demo", help="server and client in one process")
    for sub in (server, client):
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=4433)
    for sub in (server, client, demo):
        sub.add_argument("--cert-dir", type=Path, default=DEFAULT_CERT_DIR)
    client.add_argument("words", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-packet chatter
    try:
        if args.command == "server":
            trio.run(run_server, args.host, args.port, args.cert_dir)
        elif args.command == "client":
            trio.run(run_client, args.host, args.port, args.cert_dir / "cert.pem", args.words)
        else:
            trio.run(run_demo, args.cert_dir)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
