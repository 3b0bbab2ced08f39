#!/usr/bin/env python3
"""Drives the gateway's sample web app in headless Chromium, step by step.

Playwright for Python (PyPI, pinned in requirements.txt) drives the Chromium the machine
has (Debian's `chromium`, given with --chromium): Playwright's own browser downloads are
never used. The caller (tests/tests/e2e/browser.rs) gives the page's address, with its
query parameters, and the steps; each step's outcome is one JSON line on stdout, so the
caller can act between steps (send a message once the page is signed in). The first
failing step ends the run with exit code 1, after saving a screenshot of the page and
its console log in --artifacts.

Steps, in the order given:
  sign-in          click "Sign in", wait until the connection is ready
  message:TITLE    wait for a live message titled TITLE; it becomes the current message
  inbox            wait for the current message in the inbox, unread
  unread:N         wait until the unread count shows N
  mark-read        click the current message's "Mark read"; wait until it shows read
  answer:ACTION    click the current message's ACTION button; wait until it shows answered
  delete           click the current message's "Delete"; wait until it is gone
Uncaught errors in the page, and any refusal the page shows (its last-error line: a
registration, an inbox operation or a receipt the servers refused), fail the run too.
"""

import argparse
import json
import os
import sys
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright


def report(**fields):
    print(json.dumps(fields), flush=True)


def testid(name, **attributes):
    selector = f'[data-testid="{name}"]'
    for key, value in attributes.items():
        selector += f"[data-{key.replace('_', '-')}={json.dumps(value)}]"
    return selector


class Run:
    def __init__(self, page, timeout_ms):
        self.page = page
        self.timeout = timeout_ms
        self.event_id = None

    def entry(self):
        if self.event_id is None:
            raise AssertionError("no current message: a message:TITLE step must come first")
        return self.page.locator(testid("inbox-message", event_id=self.event_id))

    def step(self, step):
        name, _, argument = step.partition(":")
        page, timeout = self.page, self.timeout
        if name == "sign-in":
            page.locator(testid("sign-in")).click()
            state = page.locator(testid("state"))
            expect(state).to_have_attribute("data-state", "ready", timeout=timeout)
            return {
                "device_id": page.locator(testid("device-id")).input_value(),
                "person": page.locator(testid("person")).inner_text(),
            }
        if name == "message":
            live = page.locator(testid("live-message")).filter(
                has=page.locator(testid("title"), has_text=argument)
            )
            expect(live).to_have_count(1, timeout=timeout)
            self.event_id = live.get_attribute("data-event-id")
            return {"event_id": self.event_id, "push": page.locator(testid("push-state")).inner_text()}
        if name == "inbox":
            expect(self.entry()).to_have_attribute("data-read", "false", timeout=timeout)
            return {}
        if name == "unread":
            expect(page.locator(testid("unread-count"))).to_have_text(argument, timeout=timeout)
            return {}
        if name == "mark-read":
            self.entry().locator(testid("mark-read")).click()
            expect(self.entry()).to_have_attribute("data-read", "true", timeout=timeout)
            return {}
        if name == "answer":
            self.entry().locator(testid("action", action=argument)).click()
            answered = self.entry().locator(testid("answered"))
            expect(answered).to_have_attribute("data-action", argument, timeout=timeout)
            return {}
        if name == "delete":
            self.entry().locator(testid("delete")).click()
            expect(self.entry()).to_have_count(0, timeout=timeout)
            return {}
        raise AssertionError(f"unknown step {step!r}")


def save_artifacts(page, directory, console):
    """A screenshot and the console log of the page, in `directory`; their paths."""
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, f"sample-app-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    saved = {}
    try:
        page.screenshot(path=f"{stem}.png", full_page=True)
        saved["screenshot"] = f"{stem}.png"
    except PlaywrightError as error:
        saved["screenshot_error"] = str(error)
    with open(f"{stem}-console.log", "w", encoding="utf-8") as out:
        out.write("\n".join(console) + "\n")
        try:
            out.write("\n--- frames the page logged ---\n")
            out.write(page.locator(testid("log")).inner_text(timeout=1000) + "\n")
        except PlaywrightError:
            pass
    saved["console"] = f"{stem}-console.log"
    return saved


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the page's address, with its query parameters")
    parser.add_argument("--chromium", required=True, help="the Chromium binary (Debian's chromium)")
    parser.add_argument("--artifacts", required=True, help="where a failure's screenshot and console log go")
    parser.add_argument("--step", action="append", default=[], help="a step (see above); repeat")
    parser.add_argument("--timeout-ms", type=int, default=15000, help="longest wait of one step")
    args = parser.parse_args()

    console = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            errors = []
            page.on("pageerror", lambda e: (errors.append(str(e)), console.append(f"pageerror: {e}")))
            page.on("requestfailed", lambda r: console.append(f"request failed: {r.method} {r.url} {r.failure}"))
            run = Run(page, args.timeout_ms)
            current = "open"
            try:
                page.goto(args.url, timeout=args.timeout_ms)
                expect(page.locator(testid("state"))).to_have_attribute("data-state", "signed-out")
                report(step="open", ok=True)
                for current in args.step:
                    started = time.monotonic()
                    found = run.step(current)
                    if errors:
                        raise AssertionError(f"uncaught errors in the page: {errors}")
                    refused = page.locator(testid("last-error"))
                    if refused.is_visible():
                        raise AssertionError(f"the page shows an error: {refused.inner_text()}")
                    report(step=current, ok=True, ms=round((time.monotonic() - started) * 1000), **found)
            except (AssertionError, PlaywrightError) as error:
                saved = save_artifacts(page, args.artifacts, console)
                report(step=current, ok=False, error=" / ".join(line.strip() for line in str(error).splitlines()[:6] if line.strip())[:800], **saved)
                return 1
        finally:
            browser.close()
    report(step="done", ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
