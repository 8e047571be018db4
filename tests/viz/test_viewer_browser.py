"""The viewer page in a real headless browser (Debian chromium driven by selenium).

Needs ``apt-get install -y chromium chromium-driver`` and ``pip install selenium``; the
whole module is skipped, with the reason, when one of them is missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from attnlab.viz.viewer import build_viewer_html, save_viewer_html

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def _find(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser")
CHROMEDRIVER = _find("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "headless browser test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver); not found on PATH",
        allow_module_level=True,
    )

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL_TOKEN = "<script>window.__pwned=1</script>"
EVIL_IMG = '<img src=x onerror="window.__pwned=2">'
Q_TOKENS = ["[CLS]", "the", "cat", EVIL_TOKEN, "sat", EVIL_IMG, "[SEP]"]  # Tq = 7
K_TOKENS = ["Die", "Katze", "saß", "auf", "</s>"]  # Tk = 5, so a transposed drawing fails


def _weights(h: int, t_q: int, t_k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.exp(3 * rng.normal(size=(h, t_q, t_k)))
    return x / x.sum(-1, keepdims=True)  # (H, Tq, Tk)


LAYERS = [_weights(3, 7, 5, 0), _weights(2, 7, 5, 1)]


@pytest.fixture(scope="module")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,1000",
    ):
        opts.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="attnlab-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as exc:  # a broken install should say why, not error every test
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium could not be started by {CHROMEDRIVER}: {exc}")
    d.set_page_load_timeout(30)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    html = build_viewer_html(
        f"viewer test {EVIL_TOKEN}",
        [{"name": "layer 0", "heads": LAYERS[0]}, {"name": "layer 1", "heads": LAYERS[1]}],
        Q_TOKENS,
        K_TOKENS,
        meta={"text": f"the cat {EVIL_TOKEN} sat", "tokens": len(Q_TOKENS)},
        query_label="target",
        key_label="source",
    )
    path = save_viewer_html(html, tmp_path_factory.mktemp("viewer") / "viewer.html")
    return path.as_uri()


@pytest.fixture
def page(driver, page_url):
    driver.get_log("browser")  # drop what earlier tests left
    driver.get(page_url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    return driver


def _opacities(d) -> np.ndarray:
    """stroke-opacity of every line, as a (Tq, Tk) matrix read from data-q / data-k."""
    cells = d.execute_script(
        "return Array.from(document.querySelectorAll('#lines-svg line.link')).map(function (l) {"
        " return [+l.getAttribute('data-q'), +l.getAttribute('data-k'), +l.getAttribute('stroke-opacity')]; });"
    )
    out = np.full((len(Q_TOKENS), len(K_TOKENS)), np.nan)
    for i, j, o in cells:
        out[int(i), int(j)] = o
    return out


def _fills(d) -> list[str]:
    return d.execute_script(
        "return Array.from(document.querySelectorAll('#heat-svg rect.cell')).map(function (c) {"
        " return c.getAttribute('fill'); });"
    )


def _errors(d) -> list:
    return [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def test_page_loads_offline_without_console_errors(page):
    assert _errors(page) == []
    # Nothing was fetched: no script, style, font or image came from anywhere.
    assert page.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert page.find_element(By.ID, "lines-svg").is_displayed()
    assert page.execute_script("return document.querySelectorAll('#lines-svg line.link').length") == 7 * 5


def test_mean_view_draws_the_mean_of_the_heads_as_line_opacity(page):
    assert Select(page.find_element(By.ID, "head")).first_selected_option.text == "all heads (mean)"
    np.testing.assert_allclose(_opacities(page), LAYERS[0].mean(0), rtol=0, atol=1.5e-3)


def test_switching_head_and_layer_changes_what_is_drawn(page):
    before_lines = _opacities(page)
    Select(page.find_element(By.ID, "head")).select_by_value("1")
    after = _opacities(page)
    assert not np.allclose(after, before_lines, atol=1e-2)
    # Row i, column j of head 1 exactly: not transposed, not another head.
    np.testing.assert_allclose(after, LAYERS[0][1], rtol=0, atol=1e-3)
    page.find_element(By.ID, "view-heatmap").click()
    assert page.find_element(By.ID, "heat-svg").is_displayed()
    before_fills = _fills(page)
    assert len(before_fills) == 7 * 5
    Select(page.find_element(By.ID, "head")).select_by_value("2")
    assert _fills(page) != before_fills
    Select(page.find_element(By.ID, "layer")).select_by_value("1")  # 2 heads: head 2 no longer exists
    options = [o.text for o in Select(page.find_element(By.ID, "head")).options]
    assert options == ["all heads (mean)", "head 0", "head 1"]
    page.find_element(By.ID, "view-lines").click()
    np.testing.assert_allclose(_opacities(page), LAYERS[1].mean(0), rtol=0, atol=1.5e-3)
    # Thumbnails select heads too, and the arrow keys step through them.
    page.find_element(By.CSS_SELECTOR, '#thumbs button[data-head="0"]').click()
    np.testing.assert_allclose(_opacities(page), LAYERS[1][0], rtol=0, atol=1e-3)
    page.find_element(By.TAG_NAME, "body").send_keys("\ue014")  # ArrowRight
    assert Select(page.find_element(By.ID, "head")).first_selected_option.text == "head 1"
    assert _errors(page) == []


def test_hovering_a_token_keeps_only_its_lines_and_names_where_it_looks(page):
    Select(page.find_element(By.ID, "head")).select_by_value("0")
    token = page.find_element(By.CSS_SELECTOR, '#lines-svg g.tok[data-axis="q"][data-index="2"]')
    ActionChains(page).move_to_element(token).perform()
    op = _opacities(page)
    assert np.all(op[[0, 1, 3, 4, 5, 6]] == 0)
    np.testing.assert_allclose(op[2], LAYERS[0][0][2], rtol=0, atol=1e-3)
    status = page.find_element(By.ID, "status").text
    top = K_TOKENS[int(np.argmax(LAYERS[0][0][2]))]
    assert "cat" in status and top in status
    # Hovering a key keeps the lines into it.
    key = page.find_element(By.CSS_SELECTOR, '#lines-svg g.tok[data-axis="k"][data-index="4"]')
    ActionChains(page).move_to_element(key).perform()
    op = _opacities(page)
    assert np.all(op[:, :4] == 0) and np.all(op[:, 4] == np.round(LAYERS[0][0][:, 4], 3))


def test_script_tokens_show_as_text_and_run_nothing(page):
    assert page.execute_script("return window.__pwned") is None
    assert page.execute_script("return document.scripts.length") == 2  # the data and the page's code
    assert page.execute_script("return document.images.length") == 0
    labels = page.execute_script(
        "return Array.from(document.querySelectorAll('#lines-svg g.tok[data-axis=\"q\"] title'))"
        ".map(function (t) { return t.textContent; });"
    )
    assert any(EVIL_TOKEN in s for s in labels) and any(EVIL_IMG in s for s in labels)
    assert EVIL_TOKEN in page.title
    assert EVIL_TOKEN in page.find_element(By.ID, "meta").text
    page.find_element(By.ID, "view-heatmap").click()
    assert page.execute_script("return window.__pwned") is None
    assert _errors(page) == []


def test_screenshot_is_produced(page, tmp_path):
    ActionChains(page).move_to_element(
        page.find_element(By.CSS_SELECTOR, '#lines-svg g.tok[data-axis="q"][data-index="1"]')
    ).perform()
    out = os.environ.get("ATTNLAB_SCREENSHOT_DIR")  # keep it to look at, e.g. in CI artifacts
    path = os.path.join(out or str(tmp_path), "viewer.png")
    assert page.save_screenshot(path)
    with open(path, "rb") as f:
        png = f.read()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_page_from_the_command_loads_without_errors(driver, tmp_path):
    from attnlab import viz_cli

    v = viz_cli.random_attention("The animal didn't cross the street because it was too tired.", seed=1)
    path = save_viewer_html(v.html(view="heatmap"), tmp_path / "random.html")
    driver.get_log("browser")
    driver.get(path.as_uri())
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    assert driver.find_element(By.ID, "heat-svg").is_displayed()
    T = len(v.query_tokens)
    assert driver.execute_script("return document.querySelectorAll('#heat-svg rect.cell').length") == T * T
    assert _errors(driver) == []
