"""The layering in design.md: the data layers never import Textual."""

from __future__ import annotations

import subprocess
import sys

DATA_LAYERS = (
    "cttop.netlink",
    "cttop.conntrack.const",
    "cttop.conntrack.model",
    "cttop.conntrack.decode",
    "cttop.conntrack.client",
    "cttop.sampler",
    "cttop.view",
    "cttop.fmt",
)


def test_data_layers_import_no_textual() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {DATA_LAYERS!r}:\n"
        "    importlib.import_module(name)\n"
        "ui = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')]\n"
        "print(','.join(sorted(ui)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"data layers pulled in: {out}"


def test_netlink_layer_knows_no_conntrack() -> None:
    code = (
        "import sys, cttop.netlink\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('cttop.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "cttop.netlink", out
