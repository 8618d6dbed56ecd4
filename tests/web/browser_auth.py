"""The chat page with --auth required, in headless Chromium: opened at /#token=VALID it
chats as the token's sub with an (authenticated) TCP client; opened with a bad token it
shows why, does not retry, and never chats. Run by tests/browser_auth.rs, which starts the
server and mints the tokens.

Nothing is downloaded: Debian's chromium and chromedriver are named explicitly.
Usage: browser_auth.py HTTP_ADDR LINE_ADDR PAGE_TOKEN TCP_TOKEN BAD_TOKEN
"""

import shutil
import sys
import tempfile
import time

from browser import LineClient, browser, connected, messages, shown, text, type_line, wait
from selenium.webdriver.common.by import By


def main():
    http, line_addr, page_token, tcp_token, bad_token = sys.argv[1:6]
    profile = tempfile.mkdtemp(prefix="ringcast-chromium-")
    driver = None
    try:
        driver = browser(profile)
        driver.get(f"http://{http}/#token={page_token}")
        connected(driver)
        wait(driver, "the token's name", lambda d: text(d, "name") == "ann")

        bob = LineClient(line_addr)
        assert bob.line().startswith("* welcome; authenticate")
        bob.send(f"/auth {tcp_token}")
        assert bob.line().startswith("* you are bob in lobby (2 members)")
        type_line(driver, "hello from a page with a token")
        bob.expect("ann: hello from a page with a token")
        bob.send("hi ann")
        shown(driver, "bob: hi ann")

        # A bad token: the page says why, stays closed, and nothing it types is said.
        driver.get("about:blank")
        driver.get(f"http://{http}/#token={bad_token}")
        shown(driver, "* error: invalid token (bad signature)")
        wait(driver, "the page to give up",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "closed")
        type_line(driver, "said without a valid token")
        # The first page's connection ends in the server's own time; no chat comes meanwhile.
        for _ in range(100):
            bob.send("/who")
            got = bob.line()
            if got == "* members of lobby (1): bob":
                break
            if not got.startswith("* members of lobby (2): "):
                sys.exit(f"browser_auth.py: the TCP client got {got!r}, not an answer to /who")
            time.sleep(0.1)
        else:
            sys.exit("browser_auth.py: the first page's connection never ended")
        assert "said without a valid token" not in " ".join(messages(driver)), messages(driver)
        print("ok", flush=True)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
