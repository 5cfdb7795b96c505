"""The flow table: a virtual list that renders only the rows on screen, so a quarter of a
million flows scroll as smoothly as ten. Its column header is a separate one-line widget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from cttop.sampler import FlowRows, Rate
from cttop.tui.columns import FLOW_COLUMNS, Column, Options, fit, layout


class SortRequested(Message):
    """The operator clicked a column title."""

    def __init__(self, sort: str) -> None:
        super().__init__()
        self.sort = sort


class ColumnHeader(Widget):
    """Column titles; the sort column carries an arrow. Click a title to sort by it."""

    DEFAULT_CSS = """
    ColumnHeader { height: 1; background: $panel; color: $text; text-style: bold; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cols: list[tuple[Column, int]] = []
        self.sort = "rate"
        self.descending = True

    def set_columns(self, cols: list[tuple[Column, int]], sort: str, descending: bool) -> None:
        self.cols, self.sort, self.descending = cols, sort, descending
        self.refresh()

    def render_line(self, y: int) -> Strip:
        segs: list[Segment] = []
        arrow = "▼" if self.descending else "▲"
        base = self.rich_style
        hot = base + Style(color="black", bgcolor="cyan", bold=True)
        for i, (col, width) in enumerate(self.cols):
            if i:
                segs.append(Segment(" ", base))
            sorted_here = col.sort is not None and (
                col.sort == self.sort or (self.sort == "rate" and col.id.endswith("_rate"))
            )
            title = col.title + (arrow if sorted_here else "")
            segs.append(Segment(fit(title, width, col.right), hot if sorted_here else base))
        return Strip(segs).adjust_cell_length(self.size.width, base)

    def on_click(self, event: events.Click) -> None:
        x = 0
        for col, width in self.cols:
            if x <= event.x < x + width and col.sort is not None:
                self.post_message(SortRequested(col.sort))
                return
            x += width + 1


class FlowTable(ScrollView, can_focus=True):
    """Rows of flows (FlowRows) or groups (list of GroupRow), with a cursor."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home", "jump(0)", "First row", show=False, id="table.first"),
        Binding("end", "jump(-1)", "Last row", show=False, id="table.last"),
    ]

    DEFAULT_CSS = """
    FlowTable { height: 1fr; scrollbar-size-vertical: 1; overflow-x: hidden; }
    FlowTable > .flowtable--cursor { background: $accent 40%; }
    FlowTable:focus > .flowtable--cursor { background: $accent; color: $text; }
    """
    COMPONENT_CLASSES = {"flowtable--cursor"}

    cursor = reactive(0, always_update=True, init=False)

    class Highlighted(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    class Chosen(Message):
        """Enter or a double click on a row."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: Sequence[Any] = FlowRows([], [])
        self.columns: tuple[Column, ...] = FLOW_COLUMNS
        self.cols: list[tuple[Column, int]] = []
        self.options = Options()
        self.hide: frozenset[str] = frozenset()
        self.generation = 0  # bumped on every new set of rows, for the render cache
        self._cache: dict[tuple[int, int, bool], Strip] = {}

    # --- data -------------------------------------------------------------------------

    def set_rows(
        self,
        rows: Sequence[Any],
        columns: tuple[Column, ...],
        options: Options,
        cursor: int | None = None,
    ) -> None:
        """Show new rows; `cursor` is where the selected row now is (None: keep the index)."""
        self.rows = rows
        changed_columns = columns is not self.columns
        self.columns = columns
        self.options = options
        self.generation += 1
        self._cache.clear()
        if changed_columns or not self.cols:
            self._layout()
        self.virtual_size = Size(self.size.width, len(rows))
        n = len(rows)
        target = self.cursor if cursor is None else cursor
        self.set_reactive(FlowTable.cursor, max(0, min(target, n - 1)) if n else 0)
        self._scroll_cursor_into_view()
        self.refresh()

    def row_at(self, index: int) -> tuple[Any, Rate | None] | None:
        if 0 <= index < len(self.rows):
            if isinstance(self.rows, FlowRows):
                return self.rows.at(index)
            g = self.rows[index]
            return g, g.rate
        return None

    def _layout(self) -> None:
        self.cols = layout(self.columns, max(20, self.size.width - 1), self.hide)

    def on_resize(self, event: events.Resize) -> None:
        self._layout()
        self._cache.clear()
        self.virtual_size = Size(self.size.width, len(self.rows))

    # --- rendering --------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        index = y + int(self.scroll_offset.y)
        width = self.size.width
        base = self.rich_style
        if index >= len(self.rows):
            return Strip.blank(width, base)
        selected = index == self.cursor
        key = (index, self.generation, selected)
        strip = self._cache.get(key)
        if strip is not None:
            return strip
        row = self.row_at(index)
        assert row is not None
        item, rate = row
        segs: list[Segment] = []
        cursor_style = self.get_component_rich_style("flowtable--cursor") if selected else None
        for i, (col, w) in enumerate(self.cols):
            text, style = col.cell(item, rate, self.options)
            if i:
                segs.append(Segment(" ", base + cursor_style if cursor_style else base))
            s = base + style
            if cursor_style is not None:
                s = s + cursor_style
            segs.append(Segment(fit(text, w, col.right), s))
        fill = base + cursor_style if cursor_style else base
        strip = Strip(segs).adjust_cell_length(width, fill)
        if len(self._cache) > 512:
            self._cache.clear()
        self._cache[key] = strip
        return strip

    # --- cursor -----------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        self._scroll_cursor_into_view()
        self.refresh()
        self.post_message(self.Highlighted(new))

    def _scroll_cursor_into_view(self) -> None:
        if not self.rows:
            return
        self.scroll_to_region(Region(0, self.cursor, 1, 1), animate=False, force=True)

    def _move_to(self, index: int) -> None:
        n = len(self.rows)
        if n:
            self.cursor = max(0, min(index, n - 1))

    def action_cursor(self, delta: int) -> None:
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor + direction * max(1, self.size.height - 1))

    def action_jump(self, where: int) -> None:
        self._move_to(len(self.rows) - 1 if where < 0 else 0)

    def on_click(self, event: events.Click) -> None:
        index = event.y + int(self.scroll_offset.y)
        if 0 <= index < len(self.rows):
            if index == self.cursor and event.chain >= 2:
                self.post_message(self.Chosen(index))
            self.cursor = index
