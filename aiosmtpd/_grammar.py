"""The SMTP argument grammar: addresses, ESMTP parameters, command keywords.

Pure functions, no I/O.  ``smtp.py`` calls them for MAIL, RCPT and VRFY; they
are also exposed there under their upstream names (``_getaddr``,
``_getparams``, ``_strip_command_keyword``) for subclasses that use them.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

__all__ = [
    "control_chars_to_question_marks",
    "get_address",
    "get_params",
    "strip_keyword",
]

# The common shape, ``<local@domain>``, parsed without the standard library's
# RFC 5322 parser (which costs tens of microseconds per address).  The shape is
# deliberately narrow: only inputs for which that parser is known to return
# exactly ``local@domain`` and the remaining text take this path; everything
# else falls through to the full parser, so the accepted language is the same.
# ``tests/test_grammar.py`` checks the equivalence with hypothesis.
_SIMPLE_ANGLE_ADDR = re.compile(
    r"<([A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    # After the '>', the stdlib parser skips folding white space, which is
    # any str.isspace() run once it starts with SP or HTAB, and comments.
    r"(?:[ \t]\s*(?![\s(])|\Z)"
)

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

AddressResult = Union[tuple[str, str], tuple[None, None]]


def strip_keyword(keyword: str, arg: str) -> Optional[str]:
    """Return ``arg`` after a case-insensitive ``keyword`` prefix, stripped.

    ``None`` when ``arg`` does not start with the keyword.
    """
    n = len(keyword)
    if arg[:n].upper() == keyword:
        return arg[n:].strip()
    return None


def _parse_with_stdlib(arg: str, require_closing_bracket: bool = True) -> AddressResult:
    # Imported lazily: the module is large and most addresses never need it.
    from email._header_value_parser import get_addr_spec, get_angle_addr
    from email.errors import HeaderParseError, InvalidHeaderDefect

    try:
        token: Any
        if arg.lstrip().startswith("<"):
            token, rest = get_angle_addr(arg)
            # Deviation (CHANGES.rst): an angle-addr without its closing '>'
            # is malformed; upstream silently accepted it.
            # The parser records this defect on the angle-addr token itself.
            # (Not all_defects: walking it crashes on some inputs, '<a@[b>'.)
            for defect in token.defects if require_closing_bracket else ():
                if isinstance(defect, InvalidHeaderDefect) and "trailing '>'" in str(
                    defect
                ):
                    return None, None
        else:
            token, rest = get_addr_spec(arg)
        address = token.addr_spec
    except (HeaderParseError, IndexError, AttributeError, UnboundLocalError):
        # The stdlib parser crashes on some truncated inputs: IndexError for
        # '<', '<@', '"', AttributeError for 'a@[b', UnboundLocalError for
        # '<a@[ '; upstream replied "500 Error: (IndexError) ...".  They are
        # malformed addresses (CHANGES.rst).
        return None, None
    if address is None:  # pragma: no cover - the parsers always set it
        return None, None
    return address, rest


def get_address(
    arg: str, local_part_limit: int = 0, *, require_closing_bracket: bool = True
) -> AddressResult:
    """Parse the address at the start of ``arg`` (the text after ``FROM:``/``TO:``).

    Returns ``("", "")`` for an empty argument, ``(None, None)`` when the
    address is malformed or its local part is longer than ``local_part_limit``
    (0 means unlimited), else ``(address, rest)`` where ``rest`` is the text
    after the address (the ESMTP parameters).  ``require_closing_bracket``
    rejects ``<a@b`` (MAIL and RCPT, a deviation in CHANGES.rst); VRFY stays
    lenient (docs/decisions.rst, "Address syntax").
    """
    if not arg:
        return "", ""
    m = _SIMPLE_ANGLE_ADDR.match(arg)
    if m is not None:
        address: Optional[str] = m.group(1)
        rest = arg[m.end() :]
    else:
        address, rest_ = _parse_with_stdlib(arg, require_closing_bracket)
        if address is None:
            return None, None
        rest = rest_ or ""
    assert address is not None
    if local_part_limit:
        local_part = address.rpartition("@")[0] if "@" in address else address
        if len(local_part) > local_part_limit:
            return None, None
    return address, rest


def get_params(params: list[str]) -> Optional[dict[str, Union[str, bool]]]:
    """Parse ESMTP parameter words (already upper-cased) into a dict.

    ``KEY=VALUE`` maps to the value, a bare ``KEY`` to ``True``.  Returns
    ``None`` if any word is malformed: an empty or non-alphanumeric key, or
    ``KEY=`` with an empty value.  Later duplicates overwrite earlier ones.
    """
    result: dict[str, Union[str, bool]] = {}
    for param in params:
        key, eq, value = param.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        result[key] = value if eq else True
    return result


def control_chars_to_question_marks(text: str) -> str:
    """Make ``text`` safe to echo in a one-line reply (CHANGES.rst, "Echoed text")."""
    return _CONTROL_CHARS.sub("?", text)
