"""Every image of the rendered site has alt text: the site is built from the committed outputs
(``tools/build_site.py --no-execute``) and every page is opened in headless Chromium; each
``<img>`` must carry a real description - for a lesson's figure, its caption, which is also the
``<figcaption>`` under it - never an empty one or nbconvert's placeholder."""

from __future__ import annotations

import subprocess
import sys

from browser_support import REPO, launch, requires_chromium

pytestmark = requires_chromium
PLACEHOLDER = "No description has been provided for this image"


def test_every_image_of_the_rendered_site_has_alt_text(tmp_path):
    from playwright.sync_api import sync_playwright

    out = tmp_path / "site"
    built = subprocess.run([sys.executable, str(REPO / "tools" / "build_site.py"), "--out",
                            str(out), "--no-execute"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    pages = sorted(out.glob("*.html"))
    assert len(pages) > 10
    missing, figures = [], 0
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        try:
            for html in pages:
                page.goto(html.as_uri())
                images = page.locator("img").evaluate_all(
                    "imgs => imgs.map(i => [i.getAttribute('alt'), "
                    "i.closest('figure') && i.closest('figure').querySelector('figcaption') "
                    "? i.closest('figure').querySelector('figcaption').innerText : null])")
                for alt, figcaption in images:
                    if not (alt or "").strip() or alt.strip() == PLACEHOLDER:
                        missing.append(html.name)
                    if figcaption is not None:
                        figures += 1
                        assert figcaption.strip() == alt.strip(), (html.name, alt, figcaption)
        finally:
            browser.close()
    assert not missing, f"images without alt text on: {sorted(set(missing))}"
    assert figures >= 30, f"only {figures} captioned figures in the site"
