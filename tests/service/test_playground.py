"""The playground page (``GET /``) in a real headless browser (Debian's chromium through chromedriver) against a
real server with an API key: a bad input shows the API's message and starts no job; a first-stage job shows its 5
stage-1 frames as they come, 100 %, completed, and the finished video fetched (with the key) as a blob."""

from __future__ import annotations

import shutil
import time

import pytest
from helpers.server import ServerProcess

API_KEY = "k-test"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
JOB_TIMEOUT_S = 180.0

pytestmark = pytest.mark.slow

STATE_JS = """
const q = (s) => document.querySelector(s);
const media = q('#result video, #result img');
return {previews: [...document.querySelectorAll('#previews img')].filter((i) => i.src.startsWith('data:')).length,
        progress: q('#progress').value, status: q('#status').textContent.trim(), error: q('#error').textContent,
        result: media ? media.tagName.toLowerCase() + ' ' + media.src : null};
"""


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install selenium")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"chromium/chromedriver not installed ({', '.join(missing)} missing): "
                    "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture
def browser():
    driver = _browser()
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = driver.execute_script(STATE_JS)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not get to {what} in {timeout} s: {state}")
        time.sleep(0.2)


def _fill(driver, element_id: str, text: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(text)


def test_playground_generates_a_video(browser, tmp_path):
    with ServerProcess(tmp_path / "store", api_key=API_KEY) as server:
        browser.get(server.url + "/")
        assert browser.find_element("id", "only-first-stage").is_selected()  # the default on slow servers
        _fill(browser, "prompt", "a cat playing the piano")

        # a wrong key: the API's 401 message, no job
        _fill(browser, "api-key", "not-the-key")
        browser.find_element("id", "generate").click()
        _wait(browser, lambda s: "incorrect API key" in s["error"], 15, "the 401 message")

        # a bad input: the API's own message, no job started
        _fill(browser, "api-key", API_KEY)
        _fill(browser, "seed", "-1")
        expected = server.client.post("/v1/videos", json={"prompt": "a cat playing the piano", "seed": -1,
                                                          "only_first_stage": True})
        assert expected.status_code == 422
        message = expected.json()["error"]["message"]
        browser.find_element("id", "generate").click()
        state = _wait(browser, lambda s: message in s["error"], 15, f"the error {message!r}")
        assert state["status"] == "idle" and state["previews"] == 0 and state["result"] is None
        assert server.client.get("/v1/videos").json()["data"] == []

        # a good one: previews as they come, then the finished video
        _fill(browser, "seed", "7")
        started = time.monotonic()
        browser.find_element("id", "generate").click()
        state = _wait(browser, lambda s: s["status"] in ("completed", "failed", "cancelled") and
                      (s["result"] is not None or s["status"] != "completed"), JOB_TIMEOUT_S, "a finished job")
        assert state["status"] == "completed", state
        assert state["error"] == ""
        assert state["previews"] >= 5, state
        assert state["progress"] == 100
        tag, src = state["result"].split(" ", 1)
        assert tag in ("video", "img") and src.startswith("blob:"), state
        jobs = server.client.get("/v1/videos").json()["data"]
        assert [j["status"] for j in jobs] == ["completed"]
        assert jobs[0]["params"]["seed"] == 7 and jobs[0]["params"]["only_first_stage"] is True
        assert browser.execute_script("return localStorage.getItem('cogvideo-api-key')") == API_KEY
        print(f"job seen through the page in {time.monotonic() - started:.1f} s")
