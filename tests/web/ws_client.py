"""WebSocket conformance with a real client library: Python's `websockets` (Debian's
python3-websockets; written for its 10.4 and later). Run by tests/websocket.rs against
a server started with --max-line 100; exits non-zero, saying what went wrong, if
anything is not as docs/protocol.md says.

Usage: ws_client.py HTTP_ADDR LINE_ADDR
"""

import asyncio
import sys

import websockets

TIMEOUT = 20  # seconds; only a broken server takes this long


def check(got, wanted, what):
    if got != wanted:
        sys.exit(f"ws_client.py: {what}: got {got!r}, expected {wanted!r}")


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def member(url, name):
    ws = await websockets.connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT)
    welcome = await recv(ws)
    if not (welcome.startswith("* you are user") and "; /help lists commands" in welcome):
        sys.exit(f"ws_client.py: unexpected welcome {welcome!r}")
    await ws.send(f"/nick {name}")
    check(await recv(ws), f"* you are {name}", "/nick")
    await ws.send("/join wsroom")
    joined = await recv(ws)
    if not joined.startswith("* joined wsroom ("):
        sys.exit(f"ws_client.py: /join answered {joined!r}")
    return ws


async def main(http, line_addr):
    url = f"ws://{http}/ws"
    a = await member(url, "wsa")
    b = await member(url, "wsb")
    host, port = line_addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))

    async def tcp_line():
        return (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode().rstrip("\n")

    await tcp_line()  # welcome
    writer.write(b"/nick tcpc\n/join wsroom\n")
    check(await tcp_line(), "* you are tcpc", "TCP /nick")
    check(await tcp_line(), "* joined wsroom (3 members)", "TCP /join")

    # Chat both ways between WebSocket and TCP members.
    await a.send("hello from websockets")
    check(await recv(b), "wsa: hello from websockets", "WebSocket to WebSocket")
    check(await tcp_line(), "wsa: hello from websockets", "WebSocket to TCP")
    writer.write(b"hello from tcp\n")
    for ws in (a, b):
        check(await recv(ws), "tcpc: hello from tcp", "TCP to WebSocket")

    # Bytes that are not UTF-8 arrive as U+FFFD in a valid text frame.
    writer.write(b"bad \xff\xfe bytes\n")
    check(await recv(a), "tcpc: bad \ufffd\ufffd bytes", "non-UTF-8 from TCP")
    await recv(b)

    # A message with a newline is two lines, as on TCP.
    await a.send("one\ntwo")
    check([await recv(b), await recv(b)], ["wsa: one", "wsa: two"], "a two-line message")
    check([await tcp_line(), await tcp_line()], ["wsa: one", "wsa: two"], "a two-line message")

    # Fragments the library sends are one message.
    await a.send(["frag", "mented ", "message"])
    check(await recv(b), "wsa: fragmented message", "a fragmented message")
    check(await tcp_line(), "wsa: fragmented message", "a fragmented message to TCP")

    # Ping answered by pong, with the library's payload.
    pong = await a.ping(b"are you there")
    await asyncio.wait_for(pong, TIMEOUT)

    # A message as long as --max-line passes; one byte more closes with 1009.
    await a.send("x" * 100)
    check(await recv(b), "wsa: " + "x" * 100, "a message of --max-line bytes")
    await tcp_line()
    await b.send("y" * 101)
    await asyncio.wait_for(b.wait_closed(), TIMEOUT)
    check(b.close_code, 1009, "close code of a message over --max-line")

    # /quit: the bye notice, then the server closes with 1000.
    await a.send("/quit")
    check(await recv(a), "* bye", "/quit")
    await asyncio.wait_for(a.wait_closed(), TIMEOUT)
    check(a.close_code, 1000, "close code after /quit")

    # The close handshake started by the client: its code echoed, then the end.
    c = await member(url, "wsc")
    await asyncio.wait_for(c.close(code=4000, reason="done here"), TIMEOUT)
    check(c.close_code, 4000, "close code echoed")
    writer.write(b"/who\n")
    check(await tcp_line(), "* members of wsroom (1): tcpc", "members after the WebSocket ones left")
    writer.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
