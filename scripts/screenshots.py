"""Make the README's screenshots from the real app on the bundled demo recording.

    python scripts/screenshots.py [--out screenshots] [--polls 30]

Writes NAME-WxH.svg (Textual's own export) and NAME-WxH.png (the SVG through cairosvg) for the
main screen, a filtered view, a grouped view, the detail and the help screens at 160×48, and the
main screen at 100×30 too.

The PNGs need the Fira Code font, which the SVGs name (Debian/Ubuntu: `apt-get install
fonts-firacode`); without it fontconfig substitutes a proportional font and the columns do not
line up. The images are deterministic: the replay moves only when told, the header's clock is
the recording's own (in UTC) and the poll time is pinned at 0 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.pilot import Pilot  # noqa: E402
from textual.widgets import Input  # noqa: E402

from cttop.record import demo_source  # noqa: E402
from cttop.tui.app import CttopApp, ViewSettings  # noqa: E402

# name, size, settings, keys pressed after the polls
SHOTS: tuple[tuple[str, tuple[int, int], ViewSettings, tuple[str, ...]], ...] = (
    ("main", (160, 48), ViewSettings(), ()),
    ("main", (100, 30), ViewSettings(), ()),
    ("filtered", (160, 48), ViewSettings(), ("t", "slash", *"nat dport:443")),
    ("grouped", (160, 48), ViewSettings(group="dport"), ()),
    ("detail", (160, 48), ViewSettings(expr="dnat tcp"), ("enter",)),
    ("help", (160, 48), ViewSettings(), ("question_mark",)),
)

# Textual lays out cells 0.61 em wide; Fira Code's advance is 0.6 em. Browsers honour the SVG's
# textLength and stretch each run to its cells; cairosvg does not, so long runs drift left of the
# short ones beside them. A letter spacing of the difference (0.01 em of the 20px font) lines
# them up again.
_LETTER_SPACING = "0.2"


async def settle(pilot: Pilot[Any]) -> None:
    app = pilot.app
    for _ in range(200):
        if not any(w.is_running or w.state.name == "PENDING" for w in app.workers):
            return
        await app.workers.wait_for_complete()
        await pilot.pause()
    raise RuntimeError("the app's workers did not settle")


async def shoot(
    size: tuple[int, int], settings: ViewSettings, keys: Sequence[str], polls: int
) -> str:
    # The replay moves only when told (a speed that makes its next poll a day away).
    source = demo_source(loop=False)
    app = CttopApp(source, settings=settings, label="demo", timer=lambda: 0.0, autopoll=False)
    try:
        async with app.run_test(size=size) as pilot:
            app.query_one("#filter-bar", Input).cursor_blink = False
            await settle(pilot)
            while app.polls < polls:
                app.poll()
                await settle(pilot)
            for key in keys:
                await pilot.press(key)
                await settle(pilot)
            await pilot.pause()
            return app.export_screenshot(title="cttop")
    finally:
        source.close()


def to_png(svg: str, path: Path) -> None:
    import cairosvg

    fixed = re.sub(r"<text ", f'<text letter-spacing="{_LETTER_SPACING}" ', svg)
    cairosvg.svg2png(bytestring=fixed.encode(), write_to=str(path))


def check_font() -> None:
    if shutil.which("fc-match") is None:
        return
    found = subprocess.run(
        ["fc-match", "-f", "%{family}", "Fira Code"], capture_output=True, text=True, check=False
    ).stdout
    if "Fira Code" not in found:
        print(
            f"warning: Fira Code is not installed (fontconfig gives {found!r}): the PNGs will "
            "use a proportional font. Install fonts-firacode.",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument(
        "--polls", type=int, default=30, help="polls before the shot (the detail's history)"
    )
    args = parser.parse_args(argv)
    os.environ["TZ"] = "UTC"
    time.tzset()
    check_font()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, size, settings, keys in SHOTS:
        svg = asyncio.run(shoot(size, settings, keys, args.polls))
        stem = args.out / f"{name}-{size[0]}x{size[1]}"
        stem.with_suffix(".svg").write_text(svg, encoding="utf-8")
        to_png(svg, stem.with_suffix(".png"))
        print(f"{stem.with_suffix('.svg')}  {stem.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
