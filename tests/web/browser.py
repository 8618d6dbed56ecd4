"""The chat page in a real browser: two headless Chromium sessions and a TCP client chat
in one room; /nick and /join typed in the page change the name and room it shows; the
page reconnects after the server restarts. Run by tests/browser.rs, which starts the
server and restarts it when asked (a `restart` line on stdout, answered on stdin).

Nothing is downloaded: Debian's chromium and chromedriver are named explicitly.
Usage: browser.py HTTP_ADDR LINE_ADDR SCREENSHOT.png
"""

import os
import shutil
import socket
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT = 30  # seconds; only a broken page or server takes this long


def browser(profile):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=760,620", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    # The page's console, for the failure message.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(driver, what, condition):
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        lines = "\n".join(f"  | {t}" for t in messages(driver))
        console = "\n".join(f"  | {e.get('message')}" for e in driver.get_log("browser"))
        sys.exit(f"browser.py: timed out waiting for {what}; status "
                 f"{text(driver, 'status')!r}; the page shows:\n{lines}\n"
                 f"its console:\n{console}")


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def messages(driver):
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#log li")]


def shown(driver, line):
    wait(driver, f"{line!r} on the page", lambda d: line in messages(d))


def connected(driver):
    wait(driver, "the page to connect", lambda d:
         d.find_element(By.ID, "status").get_attribute("data-state") == "open"
         and text(d, "name") not in ("", "…"))


def type_line(driver, line):
    """Types as a keyboard-only user would: into whatever has focus, then Enter."""
    focused = driver.switch_to.active_element
    assert focused.get_attribute("id") == "line", \
        f"focus is on {focused.tag_name}#{focused.get_attribute('id')}, not the input line"
    focused.send_keys(line + Keys.ENTER)


class LineClient:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def line(self):
        got = self.file.readline()
        if not got:
            sys.exit("browser.py: the TCP client's connection closed")
        return got.decode().rstrip("\n")

    def expect(self, wanted):
        got = self.line()
        if got != wanted:
            sys.exit(f"browser.py: the TCP client got {got!r}, expected {wanted!r}")


def main():
    http, line_addr, screenshot = sys.argv[1:4]
    profiles = [tempfile.mkdtemp(prefix="ringcast-chromium-") for _ in range(2)]
    drivers = []
    try:
        drivers = [browser(p) for p in profiles]
        alice, bob = drivers
        for d in drivers:
            d.get(f"http://{http}/")
            connected(d)

        # Keyboard only: the input line has focus from the start and keeps it.
        type_line(alice, "/nick alice")
        wait(alice, "the name alice", lambda d: text(d, "name") == "alice")
        type_line(bob, "/nick bob")
        wait(bob, "the name bob", lambda d: text(d, "name") == "bob")
        for d in drivers:
            type_line(d, "/join garden")
            wait(d, "the room garden", lambda d: text(d, "room") == "garden")

        carol = LineClient(line_addr)
        assert carol.line().startswith("* you are ")
        carol.send("/nick carol")
        carol.expect("* you are carol")
        carol.send("/join garden")
        carol.expect("* joined garden (3 members)")

        type_line(alice, "hello from a browser tab")
        carol.expect("alice: hello from a browser tab")
        shown(bob, "alice: hello from a browser tab")
        type_line(bob, "and hello from another")
        carol.expect("bob: and hello from another")
        shown(alice, "bob: and hello from another")
        carol.send("hi both, carol here on nc")
        for d in drivers:
            shown(d, "carol: hi both, carol here on nc")
        type_line(alice, "/who")
        shown(alice, "* members of garden (3): alice, bob, carol")
        # The sender's own line is on its page too (the server does not echo it).
        for d, own in ((alice, "alice: hello from a browser tab"),
                       (bob, "bob: and hello from another")):
            shown(d, own)

        # Chat, notices and errors look different.
        type_line(alice, "/join garden")
        shown(alice, "* error: you are in garden already")
        classes = {li.text: li.get_attribute("class")
                   for li in alice.find_elements(By.CSS_SELECTOR, "#log li")}
        assert classes["carol: hi both, carol here on nc"] == "chat", classes
        assert classes["* you are alice"] == "notice", classes
        assert classes["* error: you are in garden already"] == "notice error", classes
        colors = alice.execute_script(
            "return [...document.querySelectorAll('#log li')].map(li => getComputedStyle(li).color)")
        assert len(set(colors)) >= 2, f"every line is the same colour: {colors}"

        # Written beside its place and renamed, so a reader never sees half a picture.
        tmp = os.path.join(os.path.dirname(screenshot), f".chat-page-{os.getpid()}.png")
        alice.save_screenshot(tmp)
        os.replace(tmp, screenshot)

        # A phone's width: nothing is wider than the screen.
        bob.set_window_size(390, 800)
        overflow = bob.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"

        # The connection is cut (by a proxy: the server stays up) while a TCP client
        # talks: once the pages have reconnected by themselves, each shows every line
        # it missed, once.
        dave = LineClient(line_addr)
        assert dave.line().startswith("* you are ")
        dave.send("/nick dave")
        dave.expect("* you are dave")
        dave.send("/join garden")
        assert dave.line().startswith("* joined garden (")
        print("cut", flush=True)
        if sys.stdin.readline().strip() != "cut":
            sys.exit("browser.py: the connection was not cut")
        for i in range(20):
            dave.send(f"missed {i}")
        missed = [f"dave: missed {i}" for i in range(20)]
        for d in drivers:
            wait(d, "all 20 lines said while cut off",
                 lambda d: all(line in messages(d) for line in missed))
            counts = [messages(d).count(line) for line in missed]
            assert counts == [1] * 20, f"shown other than once each: {counts}"
            assert any(m.startswith("* reconnected") for m in messages(d)), messages(d)
            assert text(d, "room") == "garden", text(d, "room")
        own = messages(alice).count("alice: hello from a browser tab")
        assert own == 1, f"alice's own line shown {own} times"

        # The server goes away and comes back: the page says so, reconnects by itself,
        # and says that what was said before the restart is gone.
        dave.sock.close()
        carol.sock.close()
        print("restart", flush=True)
        wait(alice, "the page to notice the server left",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") != "open")
        if sys.stdin.readline().strip() != "restarted":
            sys.exit("browser.py: the server was not restarted")
        gone = "* error: history gap (the server restarted: earlier lines are lost)"
        for d in drivers:
            connected(d)
            shown(d, gone)
            wait(d, "the room again after reconnecting", lambda d: text(d, "room") == "garden")
        print("ok", flush=True)
    finally:
        for d in drivers:
            d.quit()
        for p in profiles:
            shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
