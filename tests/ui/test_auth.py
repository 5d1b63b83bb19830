"""The dashboard with authentication on: it asks for a token, says plainly when one is refused, keeps
the accepted one for the tab, and shows a read-only token no button its role may not use (the API
refuses that role the same actions), while an operator's token gets them."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.ui.conftest import UI, AuthServer


def _sign_in(ui: UI, token: str) -> None:
    field = ui.driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    ui.driver.find_element(By.ID, "login-submit").click()


def _asking(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return document.getElementById('login').open"))


def test_the_page_asks_for_a_token_and_a_reader_cannot_cancel(browser: Chrome, auth_server: AuthServer,
                                                              tmp_path: Path) -> None:
    server, tokens = auth_server.server, auth_server.tokens
    with server.client() as admin:
        resp = admin.post("/v1/workflows", params={"wait": "true"}, json={
            "execution_id": "guarded-1", "definition": {"name": "guarded", "version": "1", "tasks": [
                {"name": "work", "required_capabilities": ["nobody-has-this"]},
                {"name": "approve", "type": "signal"}]}})
        assert resp.status_code == 201, resp.text
    ui = UI(browser, server.url, tmp_path)
    ui.open("workflows/guarded-1")
    ui.wait(_asking)
    d = ui.driver
    assert d.find_element(By.ID, "view").get_attribute("data-state") == "loading"  # nothing shown yet
    ui.screenshot("sign-in")

    _sign_in(ui, "abt_not-a-real-token")
    ui.wait(lambda drv: drv.find_element(By.ID, "login-error").is_displayed())
    assert "This token was refused (401)" in d.find_element(By.ID, "login-error").text
    assert _asking(d)

    _sign_in(ui, tokens["reader"])
    ui.wait_ready()
    assert not _asking(d)
    assert d.execute_script("return sessionStorage.getItem('agentbus.token')") == tokens["reader"]
    assert d.find_element(By.ID, "who").text == "signed in as reader · read-only"
    assert d.find_elements(By.CSS_SELECTOR, "#dag .dag-node[data-step='approve'][data-status='waiting']")
    assert d.find_elements(By.ID, "cancel-run") == []
    assert d.find_elements(By.CSS_SELECTOR, "button[data-signal]") == []
    assert "may not cancel or signal" in ui.text("#read-only-note")
    ui.screenshot("workflow-reader")
    with server.client(tokens["reader"]) as reader:  # what the page hides, the API refuses
        refused = reader.delete("/v1/workflows/guarded-1")
        assert refused.status_code == 403 and refused.json()["permission"] == "workflows:run"
    # A reload keeps the tab signed in.
    ui.open("workflows/guarded-1")
    ui.wait_ready()
    assert not _asking(d)

    ui.click("#signout")
    ui.wait(_asking)
    _sign_in(ui, tokens["operator"])
    ui.wait_ready()
    assert d.find_element(By.ID, "who").text == "signed in as operator"
    assert ui.shown("#cancel-run") and ui.shown("button[data-signal='approve']")
    # The browser reports the refused requests (the page's first read, the wrong token); nothing
    # else may go wrong.
    for entry in ui.console():
        assert entry["source"] == "network" and " 401 " in entry["message"], entry
