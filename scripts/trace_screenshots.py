"""The screenshots in docs/trace/: trace pages of the built-in models in headless Chromium, and
the terminal view of one prompt as text.

    python scripts/trace_screenshots.py [--out docs/trace]

Needs Debian's chromium and chromium-driver and selenium (the dev extra). Each page is shown
at the call a reader learns most from: the longest accepted path (eagle, lookahead), a call
about a third of the way in (block_diffusion), the one call (cass_nat).
"""

from __future__ import annotations

import argparse
import html
import io
import re
import shutil
import tempfile
from pathlib import Path

import paragen
from paragen.trace import TREE_KINDS, Trace
from paragen.trace_html import write
from paragen.trace_view import show

PROMPT = "import os\n\n\ndef walk_files(root):\n"
SPEECH = Path(paragen.__file__).parent / "builtin" / "speech-en" / "sample-1.wav"


def traces() -> dict[str, Trace]:
    target = paragen.load("code-target")
    out = {name: paragen.generate(target, PROMPT, name, max_new_tokens=96, trace=True).trace
           for name in ("eagle", "lookahead")}
    out["block_diffusion"] = paragen.generate(paragen.load("code-block-diffusion"), PROMPT, "block_diffusion",
                                              max_new_tokens=96, trace=True).trace
    out["cass_nat"] = paragen.transcribe(paragen.load("speech-en"), SPEECH, "cass_nat", trace=True).trace
    return out


ANSI = {"42;30": "background:#3a9d4f;color:#000", "44;97": "background:#2f6fd0;color:#fff",
        "43;30": "background:#d9a42b;color:#000", "45;97": "background:#9b4fc9;color:#fff", "2": "color:#8a939c"}


def terminal_page(text: str) -> str:
    """The ANSI-coloured terminal view as a dark <pre>, for a screenshot of what a terminal shows."""
    out, open_span = [], False
    for i, part in enumerate(re.split(r"\x1b\[([0-9;]*)m", text)):
        if i % 2 == 0:
            out.append(html.escape(part))
            continue
        if open_span:
            out.append("</span>")
        open_span = part in ANSI
        if open_span:
            out.append(f"<span style='{ANSI[part]}'>")
    return ("<html><body style='margin:0;background:#1e1e1e'><pre id='term' style='margin:0;padding:12px;color:#ddd;"
            f"font:13px/1.35 monospace;white-space:pre-wrap;width:1000px'>{''.join(out)}</pre></body></html>")


def best_call(trace: Trace) -> int:
    """1-based: the call with the longest accepted path (and the most proposed), else a third of the way in."""
    if trace.calls[0].kind in TREE_KINDS:
        return 1 + max(range(len(trace.calls)), key=lambda i: (len(trace.calls[i].accepted), len(trace.calls[i].tokens), -i))
    return 1 + len(trace.calls) // 3


def main() -> None:
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/trace")
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,1000", "--hide-scrollbars"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        for name, trace in traces().items():
            page = Path(profile) / f"{name}.html"
            write(trace, page)
            driver.get(page.as_uri() + f"#call={best_call(trace)}")
            png = driver.get_screenshot_as_png()
            img = Image.open(io.BytesIO(png)).convert("RGB").quantize(64)  # a palette keeps the file small
            img.save(out / f"{name}.png", optimize=True)
            print(f"wrote {out / name}.png")
            if name == "eagle":
                buf = io.StringIO()
                show(trace, buf, calls=True, color=False)
                command = f"$ paragen generate {PROMPT!r} --strategy eagle --max-new-tokens 96 --show"
                (out / "terminal-eagle.txt").write_text(f"{command} --show-calls   # NO_COLOR\n" + buf.getvalue())
                buf = io.StringIO()
                show(trace, buf, color=True)
                term = Path(profile) / "terminal.html"
                term.write_text(terminal_page(command + "\n" + buf.getvalue()), encoding="utf-8")
                driver.get(term.as_uri())
                shot = driver.find_element("id", "term").screenshot_as_png
                Image.open(io.BytesIO(shot)).convert("RGB").quantize(32).save(out / "terminal-eagle.png", optimize=True)
                print(f"wrote {out / 'terminal-eagle.png'}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
