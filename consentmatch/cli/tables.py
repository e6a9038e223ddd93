"""The CLI's rich rendering: stdout's Console and the table that folds instead of cutting words.
Imported by common.py's `out` and `table` at the first print, so a start that prints no table
(--version, --json, an error) does not load rich."""

from __future__ import annotations

from collections.abc import Iterator

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

#: The longest word a column keeps whole when the terminal is narrow; a longer one (a hash, an
#: id) folds instead of taking the width of every other column.
LONGEST_WORD = 24
#: Words this short (a date, a count, a state, a role) are never split while the header words
#: and they can fit; longer ones (names, references) give way first, evenly.
SHORT_WORD = 10


class _Grid(Table):
    """A table that, when the terminal is too narrow for its widest lines, splits no header word
    and no short word (a date, a count, a state) while they can fit: the longest words give way
    first, evenly, and what width is left goes to the columns that need least first. Rich's own
    narrowing splits every column evenly ("Jurisdictio n", "2026-1 2-04"). Where the words
    cannot all stand side by side (nine columns in 80, or a name beside a reference), each row is
    printed as a record of "Header  value" lines instead (psql's expanded display): no word is
    cut, only one over LONGEST_WORD folds."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for column in self.columns:
            column.width = None
        headers = [Text.from_markup(c.header if isinstance(c.header, str) else "").plain.split() for c in self.columns]
        cells = [[w for cell in c.cells for w in Text.from_markup(cell if isinstance(cell, str) else "").plain.split()]
                 for c in self.columns]
        lines = [[line for cell in (c.header, *c.cells)
                  for line in Text.from_markup(cell if isinstance(cell, str) else "").plain.splitlines()]
                 for c in self.columns]
        widest = [max(map(cell_len, ls), default=1) for ls in lines]
        word = [min(LONGEST_WORD, max(map(cell_len, h + c), default=1)) for h, c in zip(headers, cells)]
        floor = [max([cell_len(w) for w in h] + [cell_len(w) for w in c if cell_len(w) <= SHORT_WORD], default=1)
                 for h, c in zip(headers, cells)]
        room = options.max_width - (len(self.columns) + 1) - 2 * len(self.columns)  # borders, padding
        if sum(widest) > room and sum(word) > room:  # some word would be cut: a record per row
            yield from self._records()
            return
        if sum(widest) > room:
            least = [max(w, f) for w, f in zip(word, floor)]
            while sum(least) > room:  # the longest words give way, one cell at a time
                i = max((i for i in range(len(least)) if least[i] > floor[i]), key=lambda i: least[i])
                least[i] -= 1
            widths, spare = list(least), room - sum(least)
            order = sorted(range(len(widths)), key=lambda i: widest[i] - least[i])
            for rank, i in enumerate(order):
                give = min(max(0, widest[i] - least[i]), spare // (len(order) - rank))
                widths[i] += give
                spare -= give
            for column, width in zip(self.columns, widths):
                column.width = width
        yield from super().__rich_console__(console, options)

    def _records(self) -> Iterator[RenderableType]:
        """Each row as a record: its column headers down the left, the values folded beside them."""
        if self.title:
            yield Text(str(self.title), style="italic")
        for row in range(self.row_count):
            record = Table.grid(padding=(0, 2))
            record.add_column(style="bold", no_wrap=True)
            record.add_column(overflow="fold")
            for column in self.columns:
                record.add_row(column.header, list(column.cells)[row])
            if row:
                yield Text("")
            yield record


def stdout_console() -> Console:
    """The Console every command prints its tables and lines with, on stdout."""
    # emoji=False: a subject named ":smile:" is shown as typed, not as an emoji.
    return Console(highlight=False, soft_wrap=True, emoji=False)


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells fold instead of ending in "…": at 80 columns or piped, a path or a
    name is printed whole, over several lines if need be; short columns (a date, a count, a
    state) never break, so words are split only where a single word is wider than its column."""
    grid = _Grid(title=title)
    for column in columns:
        grid.add_column(column, overflow="fold")
    return grid
