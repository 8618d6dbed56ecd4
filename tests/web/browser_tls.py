"""The chat page over https and its WebSocket as wss, in headless Chromium that trusts
the server's certificate only through a test CA: an NSS database made with certutil
(Debian libnss3-tools) in a temporary HOME, which is where Chromium on Linux looks for
trusted CAs. No --ignore-certificate-errors of any kind. First a Chromium whose HOME has
no such database must refuse the page; then one that trusts the CA chats with a TCP
client on the plain line port. Run by tests/browser_tls.rs, which starts the server.

Usage: browser_tls.py HTTPS_ADDR LINE_ADDR CA.pem
"""

import os
import shutil
import subprocess
import sys
import tempfile

from selenium.webdriver.common.by import By

from browser import LineClient, browser, connected, shown, text, type_line, wait


def trust(home, ca):
    """An NSS database in HOME that trusts CA for TLS servers ("C,,")."""
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb)
    for args in (["-N", "--empty-password"],
                 ["-A", "-t", "C,,", "-n", "ringcast test CA", "-i", ca]):
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", *args], check=True,
                       stdout=subprocess.DEVNULL)


def chromium(home, profile):
    # chromedriver and Chromium inherit the environment: HOME says whose NSS db counts.
    os.environ["HOME"] = home
    return browser(profile)


def main():
    https, line_addr, ca = sys.argv[1:4]
    dirs = [tempfile.mkdtemp(prefix="ringcast-tls-") for _ in range(4)]
    untrusting_home, trusting_home, profile1, profile2 = dirs
    drivers = []
    try:
        # Without the CA the page does not load: Chromium shows its certificate error
        # page, which has none of the chat page's elements.
        stranger = chromium(untrusting_home, profile1)
        drivers.append(stranger)
        stranger.get(f"https://{https}/")
        if stranger.find_elements(By.ID, "status"):
            sys.exit("browser_tls.py: a Chromium that does not trust the CA loaded the page")
        if "ERR_CERT_AUTHORITY_INVALID" not in stranger.page_source:
            sys.exit("browser_tls.py: the untrusting Chromium showed no certificate error:\n"
                     + stranger.page_source[:2000])
        stranger.quit()
        drivers.remove(stranger)

        trust(trusting_home, ca)
        alice = chromium(trusting_home, profile2)
        drivers.append(alice)
        alice.get(f"https://{https}/")
        connected(alice)
        protocol = alice.execute_script("return location.protocol")
        assert protocol == "https:", protocol
        type_line(alice, "/nick alice")
        wait(alice, "the name alice", lambda d: text(d, "name") == "alice")
        type_line(alice, "/join garden")
        wait(alice, "the room garden", lambda d: text(d, "room") == "garden")

        carol = LineClient(line_addr)
        assert carol.line().startswith("* you are ")
        carol.send("/nick carol")
        carol.expect("* you are carol")
        carol.send("/join garden")
        carol.expect("* joined garden (2 members)")
        # The page's socket is same-origin: wss:// on the https listener.
        type_line(alice, "hello over wss")
        carol.expect("alice: hello over wss")
        carol.send("hi alice, carol here on plain tcp")
        shown(alice, "carol: hi alice, carol here on plain tcp")
        print("ok", flush=True)
    finally:
        for d in drivers:
            d.quit()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
