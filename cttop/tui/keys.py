"""Every key of the app in one table: the bindings, the footer and the help screen all read it.
Each binding has an id, so a keymap can move it (`--keymap id=key,...`).
"""

from __future__ import annotations

from textual.binding import Binding

# (id, keys, action, description, in footer)
KEYS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("quit", "q", "quit", "Quit", True),
    ("help", "question_mark,f1", "help", "Help", True),
    ("filter", "slash", "filter", "Filter", True),
    ("proto", "p", "cycle_proto", "Protocol", True),
    ("state", "s", "cycle_state", "State", True),
    ("tcp", "t", "toggle_proto('tcp')", "TCP only", False),
    ("udp", "u", "toggle_proto('udp')", "UDP only", False),
    ("icmp", "i", "toggle_proto('icmp')", "ICMP only", False),
    ("sort_prev", "less_than_sign", "sort_step(-1)", "Sort column left", False),
    ("sort_next", "greater_than_sign", "sort_step(1)", "Sort column right", False),
    ("sort_choose", "f6", "choose_sort", "Sort", True),
    ("reverse", "r", "reverse", "Reverse sort", False),
    ("group", "g", "cycle_group", "Group", True),
    ("detail", "enter", "detail", "Detail (on a group: its flows)", False),
    ("pause", "space", "pause", "Pause", True),
    ("faster", "plus,equals_sign", "interval(-1)", "Shorter interval", False),
    ("slower", "minus", "interval(1)", "Longer interval", False),
    ("bits", "b", "bits", "Bits/bytes", False),
    ("names", "n", "names", "Resolve names", False),
    ("delete", "d", "delete", "Delete flow", False),
    ("delete_all", "D", "delete_matching", "Delete matching", False),
    ("record", "R", "record", "Record", False),
    ("step_back", "left_square_bracket", "replay_step(-1)", "Replay: poll back", False),
    ("step_fwd", "right_square_bracket", "replay_step(1)", "Replay: poll forward", False),
    ("replay_start", "left_curly_bracket", "replay_jump(0)", "Replay: start", False),
    ("replay_end", "right_curly_bracket", "replay_jump(-1)", "Replay: end", False),
)

# How the help screen spells keys.
KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "less_than_sign": "<",
    "greater_than_sign": ">",
    "plus": "+",
    "equals_sign": "=",
    "minus": "-",
    "space": "space",
    "enter": "Enter",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "left_curly_bracket": "{",
    "right_curly_bracket": "}",
    "f1": "F1",
    "f6": "F6",
}


def bindings() -> list[Binding]:
    return [
        Binding(keys, action, desc, show=footer, id=bid, key_display=display(keys).split(" ")[0])
        for bid, keys, action, desc, footer in KEYS
    ]


def display(keys: str) -> str:
    return " ".join(KEY_NAMES.get(k, k) for k in keys.split(","))


# The table's own navigation keys, for the help screen (bound in FlowTable).
NAVIGATION: tuple[tuple[str, str], ...] = (
    ("↑ ↓  k j", "Move the selection"),
    ("PgUp PgDn", "Page up / down"),
    ("Home End", "First / last row"),
    ("click title", "Sort by that column"),
    ("ctrl+p", "Command palette"),
    ("Esc", "Close a screen; in the filter bar, clear it"),
)
