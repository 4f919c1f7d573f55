"""What a new file name may hold, beyond what the format allows (crypto.validate_name).

Control characters are refused in names stored from now on: a name is printed
by `dfs ls` (also to another org, with `ls --org`), and a newline or a terminal
escape in it would break listings or paint the reader's terminal. Names that
already hold one stay readable and deletable; they are printed escaped.
"""

from __future__ import annotations

import unicodedata


def is_control(char: str) -> bool:
    """C0 and C1 controls, DEL, line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def check_new_name(name: str) -> None:
    """Raise ValueError if ``name`` holds a control character, or bytes that are not
    UTF-8 (a file name in another encoding, as Python hands it over)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("name is not UTF-8 (a file name in another encoding)") from None
    for char in name:
        if is_control(char):
            raise ValueError(f"name must not contain control characters (found U+{ord(char):04X})")
