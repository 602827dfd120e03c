"""The registry page of the real ``bentoml serve`` in a real headless Chromium (Debian's
``chromium`` and ``chromedriver``, driven by Selenium): the page loads, lists the
versions with their aliases, shows the bundle's ROC plot, and a link leads to a card."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from serving_fixtures import Service

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--no-proxy-server", "--disable-quic",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver)
    session = webdriver.Chrome(options=options, service=service)
    session.set_page_load_timeout(60)
    yield session
    session.quit()


def loaded(browser, image) -> bool:
    return bool(browser.execute_script("return arguments[0].complete && "
                                       "arguments[0].naturalWidth > 0", image))  # fmt: skip


def test_the_page_lists_versions_and_a_link_leads_to_the_card(browser, service: Service) -> None:
    browser.get(f"{service.url}/ui")
    assert browser.title == "mlaas4hep registry"
    assert service.tag in browser.find_element(By.TAG_NAME, "p").text  # what this replica serves
    rows = browser.find_elements(By.CSS_SELECTOR, "table tbody tr")
    versions = [r for r in rows if r.find_elements(By.LINK_TEXT, service.tag)]
    assert versions and "production" in versions[0].text
    versions[0].find_element(By.LINK_TEXT, service.tag).click()  # follow the link

    assert browser.current_url.endswith(f"/ui/models/{service.tag}")
    assert browser.find_element(By.TAG_NAME, "h1").text == service.tag
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert {"Metrics", "Plots", "Inputs", "Promotions", "Lineage"} <= set(headings)
    roc = browser.find_element(By.CSS_SELECTOR, "img[alt='roc.png']")
    assert loaded(browser, roc)  # the plot came from the bundle and decoded as an image
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "roc_auc" in page and "Jet_pt" in page


def test_an_unknown_version_or_plot_is_a_404(browser, service: Service) -> None:
    import httpx

    with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
        assert client.get("/ui/models/tth:nosuchversion").status_code == 404
        assert client.get(f"/ui/models/{service.tag}/plots/..%2Fbundle.json").status_code == 404
        assert (
            client.get(f"/ui/models/{service.tag}/plots/roc.png").headers["content-type"]
            == "image/png"
        )
