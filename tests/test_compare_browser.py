"""compare.html in a real browser (Debian's headless Chromium via Playwright): it opens from disk,
logs no errors, shows its plots, and its table sorts and filters. Skipped without Chromium, except
in CI, where .ci/run installs it."""

from __future__ import annotations

import io
import subprocess
import sys

from tests.test_compare import sweep  # noqa: F401 - the module-scoped runs fixture


def test_compare_page_in_headless_chromium(browser, sweep, tmp_path):  # noqa: F811
    from PIL import Image, ImageStat

    out = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(sweep), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
               else route.continue_())  # any network request would fail: the page must need none
    page.goto((tmp_path / "compare.html").as_uri())
    assert page.locator("#runs tbody tr").count() == 3
    images = page.locator("img")
    assert images.count() >= 4
    for i in range(3):  # the two frontiers and the curves: loaded and not blank
        img = images.nth(i)
        assert img.evaluate("i => i.complete && i.naturalWidth > 0")
        shot = Image.open(io.BytesIO(img.screenshot())).convert("L")
        assert ImageStat.Stat(shot).stddev[0] > 10, f"image {i} looks blank"
    page.click('#runs th[data-key="l0"]')
    column = [th.inner_text().strip(" ▲▼") for th in page.locator("#runs th").all()].index("l0") + 1
    values = [float(td.inner_text()) for td in page.locator(f"#runs tbody tr td:nth-child({column})").all()]
    assert values == sorted(values)
    page.click('#runs th[data-key="l0"]')
    values = [float(td.inner_text()) for td in page.locator(f"#runs tbody tr td:nth-child({column})").all()]
    assert values == sorted(values, reverse=True)
    page.fill("#filter", f"l0 <= {sorted(values)[1]}")
    assert page.locator("#runs tbody tr").count() == 2
    assert errors == []
