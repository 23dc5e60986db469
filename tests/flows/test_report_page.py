"""The report page (`index.html`) opened in a real headless Chromium: its table, notes and the three plots render
from the one file, with nothing next to it."""

import shutil
import subprocess

import pytest
from matplotlib.image import imread

from flows.report import ReportRow, write_report
from pruning.record import RunInputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def entry(method, sparsity, perplexity, errors):
    return ReportRow(model="tiny", method=method, pattern="unstructured" if sparsity else "-",
                     target_sparsity=sparsity, sparsity=sparsity, parameters=int(1_000_000 * (1 - sparsity)),
                     engine_seconds=3.0 if sparsity else None, block_relative_error=errors,
                     perplexity={"token-ppl[corpus|seqlen=32|windows=2]": perplexity},
                     inputs=RunInputs(model="tiny", model_digest="safetensors-sha256:" + "ab" * 32, calibration=None,
                                      code_digest="cd" * 32))


def chromium(*arguments, cwd):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", *arguments], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs it from Debian packages)")
def test_the_report_page_renders_its_table_and_plots_in_a_browser(tmp_path):
    entries = [entry("dense", 0.0, 30.0, []), entry("wanda", 0.5, 45.0, [0.1, 0.2]),
               entry("sparsegpt", 0.5, 40.0, [0.05, 0.1])]
    report = write_report(entries, [], tmp_path / "report")
    alone = tmp_path / "alone"  # the page with nothing next to it
    alone.mkdir()
    page = shutil.copy(report / "index.html", alone / "index.html")

    dom = chromium("--dump-dom", f"file://{page}", cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count("<img") == 3 and dom.stdout.count("data:image/png;base64,") == 3
    for text in ("sparsegpt", "40.00", "token-ppl[corpus|seqlen=32|windows=2]", "ababababababab", "transformers"):
        assert text in dom.stdout

    screenshot = tmp_path / "report.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,2400", f"file://{page}", cwd=tmp_path)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr
    pixels = imread(screenshot)[..., :3]
    # Coloured pixels (the page's own text and rules are grey) come only from the plots' lines and markers: the
    # embedded PNGs were decoded and drawn.
    assert ((pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.25).sum() > 100
    # And the page is not blank: text and table rules cover part of it.
    assert (pixels.mean(axis=-1) < 0.5).mean() > 0.005
