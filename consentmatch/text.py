"""Text a caller gives that the gallery keeps and prints back: names, references, versions.

One rule for all of it (`check_text`): NFC-normalised (an "é" typed as e + accent and one
typed as a single character are one name), trimmed, 1-200 characters, and none of the
characters that hide or rewrite what a terminal or a log shows: C0 and C1 controls and DEL
(an ESC starts a terminal escape), format characters (Unicode category Cf: bidi overrides and
isolates, zero-width spaces and joiners, the BOM), line and paragraph separators, lone
surrogates. `visible` is the other side, for text that is already stored or comes from a
path: it spells those characters out (``\\x1b``, ``\\u202e``) wherever they are printed.
"""

from __future__ import annotations

import unicodedata

from .errors import InvalidArgumentError

__all__ = ["check_text", "shown", "visible"]

#: Unicode categories refused in stored text and spelled out when printed.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in HIDDEN_CATEGORIES


def visible(text: str) -> str:
    """`text` with every control, invisible or bidi character spelled out as its escape."""
    if text.isprintable():  # the common case: nothing to spell out (spaces are printable)
        return text
    return "".join(char.encode("unicode_escape").decode("ascii") if _hidden(char) else char for char in text)


def shown(value: object) -> str:
    """User data (a name, reference, path, stored value) for a Rich line or table cell: `visible`,
    and every `[` escaped so that it is never read as markup (a subject named `[/]` is text)."""
    from rich.markup import escape  # the CLI's dependency: `import consentmatch` stays light

    return escape(visible(str(value)))


def check_text(value: object, what: str, *, limit: int = 200) -> str:
    """`value` as stored: NFC, trimmed; or InvalidArgumentError naming the rule it breaks.

    Args:
        value: what the caller gave.
        what: how the error names it, e.g. "subject name".
        limit: the most characters allowed.
    """
    text = unicodedata.normalize("NFC", value).strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidArgumentError(f"{value!r} is not a valid {what}: use 1-{limit} printable characters.")
    if len(text) > limit:
        raise InvalidArgumentError(
            f"'{visible(text[:40])}...' ({len(text):,} characters) is not a valid {what}: use 1-{limit} printable characters."
        )
    bad = next((char for char in text if _hidden(char)), None)
    if bad is not None:
        label = unicodedata.name(bad, "a control character")
        raise InvalidArgumentError(
            f"'{visible(text)}' is not a valid {what}: it holds U+{ord(bad):04X} ({label}), which terminals hide "
            "or act on; use visible characters only."
        )
    return text
