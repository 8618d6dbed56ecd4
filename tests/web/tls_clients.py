"""Three kinds of client in one room, two of them over TLS, with Python's own stacks: a
line client through `ssl`, a wss:// client through `websockets` (Debian's
python3-websockets, 10.4 and later), and a plain TCP line client. Both TLS clients
verify the server's certificate against the test CA (no verification is turned off).
Run by tests/tls.rs; exits non-zero, saying what went wrong, if anything is not as it
should be; prints "ok" otherwise.

Usage: tls_clients.py CA_FILE TLS_ADDR HTTPS_ADDR PLAIN_ADDR
"""

import asyncio
import ssl
import sys

import websockets

TIMEOUT = 20  # seconds; only a broken server takes this long


def check(got, wanted, what):
    if got != wanted:
        sys.exit(f"tls_clients.py: {what}: got {got!r}, expected {wanted!r}")


class Line:
    """A line-protocol client, over TLS when given an SSL context."""

    @classmethod
    async def connect(cls, addr, ctx=None):
        host, port = addr.rsplit(":", 1)
        self = cls()
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=ctx), TIMEOUT
        )
        welcome = await self.line()
        if not welcome.startswith("* you are user"):
            sys.exit(f"tls_clients.py: unexpected welcome {welcome!r}")
        return self

    async def line(self):
        raw = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
        return raw.decode().rstrip("\n")

    async def send(self, text):
        self.writer.write(f"{text}\n".encode())
        await self.writer.drain()


async def main(ca, tls_addr, https_addr, plain_addr):
    ctx = ssl.create_default_context(cafile=ca)
    secure = await Line.connect(tls_addr, ctx)
    version = secure.writer.get_extra_info("ssl_object").version()
    if version not in ("TLSv1.2", "TLSv1.3"):
        sys.exit(f"tls_clients.py: negotiated {version}")
    plain = await Line.connect(plain_addr)
    ws = await websockets.connect(
        f"wss://{https_addr}/ws", ssl=ctx, open_timeout=TIMEOUT, close_timeout=TIMEOUT
    )

    async def recv():
        return await asyncio.wait_for(ws.recv(), TIMEOUT)

    if not (await recv()).startswith("* you are user"):
        sys.exit("tls_clients.py: no welcome over wss")

    await secure.send("/nick tlsline")
    check(await secure.line(), "* you are tlsline", "TLS /nick")
    await plain.send("/nick plain")
    check(await plain.line(), "* you are plain", "TCP /nick")
    await ws.send("/nick wss")
    check(await recv(), "* you are wss", "wss /nick")
    await secure.send("/join mixed")
    check(await secure.line(), "* joined mixed (1 member)", "TLS /join")
    await plain.send("/join mixed")
    check(await plain.line(), "* joined mixed (2 members)", "TCP /join")
    await ws.send("/join mixed")
    check(await recv(), "* joined mixed (3 members)", "wss /join")

    await secure.send("hello from tls")
    check(await plain.line(), "tlsline: hello from tls", "TLS to TCP")
    check(await recv(), "tlsline: hello from tls", "TLS to wss")
    await plain.send("hello from tcp")
    check(await secure.line(), "plain: hello from tcp", "TCP to TLS")
    check(await recv(), "plain: hello from tcp", "TCP to wss")
    await ws.send("hello from wss")
    check(await secure.line(), "wss: hello from wss", "wss to TLS")
    check(await plain.line(), "wss: hello from wss", "wss to TCP")

    # A burst bigger than one TLS record, in both directions.
    big = "z" * 3000
    for i in range(20):
        await plain.send(f"{i} {big}")
    for i in range(20):
        check(await secure.line(), f"plain: {i} {big}", "a burst to TLS")
        check(await recv(), f"plain: {i} {big}", "a burst to wss")

    # /quit over TLS: the bye, then the server's close_notify and FIN (EOF, no error).
    await secure.send("/quit")
    check(await secure.line(), "* bye", "TLS /quit")
    check(await asyncio.wait_for(secure.reader.read(), TIMEOUT), b"", "TLS EOF after /quit")
    await asyncio.wait_for(ws.close(), TIMEOUT)
    check(ws.close_code, 1000, "wss close code")
    await plain.send("/who")
    check(await plain.line(), "* members of mixed (1): plain", "members after the TLS ones left")
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
