"""Header values checked against their VR before any use (routing, logs, reasons, answers).

A corrupt element length can make one element swallow the ones after it: a Modality of
``'CR\\x10\\x00...PN...<patient name>'``. Every value the platform reads goes through
:class:`CheckedHeader`, which validates it with pydicom's own VR rules (length, character
repertoire, format) plus "no control characters" for text, and VM for binary numbers. A value
that fails is treated as absent and its keyword recorded, so that reasons say "invalid
<Keyword>" and never quote it.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

log = logging.getLogger(__name__)

# Text VRs whose values are checked for control characters (ESC introduces a character set
# switch and is allowed; LT/ST/UT also allow line breaks and tabs).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})
_LONG_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC"})
_BINARY_NUMBERS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_ALLOWED_CONTROLS = {"\x1b"}
_LONG_TEXT_CONTROLS = {"\x1b", "\n", "\r", "\t", "\f"}


def quiet_pydicom() -> None:
    """pydicom's own read-time validation warns (and logs) with the offending value quoted:
    turn it off in the decoder's processes; this module does the checking instead."""
    config.settings.reading_validation_mode = config.IGNORE


def _vr(element_vr: str, keyword: str) -> str:
    if element_vr in ("UN", "") or " or " in element_vr:
        try:
            return str(dictionary_VR(keyword))
        except KeyError:
            return element_vr
    return element_vr


def _text_ok(value: str, vr: str) -> bool:
    allowed = _LONG_TEXT_CONTROLS if vr in _LONG_TEXT_VRS else _ALLOWED_CONTROLS
    return all(c.isprintable() or c in allowed for c in value)


def value_is_valid(vr: str, value: Any, max_values: int | None = None) -> bool:
    """Whether ``value`` (one value or a multi-value) obeys ``vr``'s rules."""
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    if max_values is not None and len(values) > max_values:
        return False
    for one in values:
        if one is None or one == "" or one == b"":
            continue
        if vr in _BINARY_NUMBERS:
            if not isinstance(one, (int, float)):
                return False
            continue
        if isinstance(one, (bytes, bytearray)):
            return False
        text = str(one)
        if (vr in _TEXT_VRS or vr in _LONG_TEXT_VRS) and not _text_ok(text, vr):
            return False
        if vr == "CS":  # lower case is outside CS's repertoire but common and harmless
            text = text.upper()
        try:
            validate_value(vr, text if vr in _TEXT_VRS else one, config.RAISE)
        except (ValueError, TypeError):
            return False
    return True


class CheckedHeader:
    """Reads elements of one data set (and its nested items) through the VR checks.

    ``invalid`` collects, in order, the keywords whose value failed; a keyword is recorded
    once. Values are returned as pydicom gives them (str, MultiValue, number, Sequence).
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.invalid: list[str] = []

    def get(self, keyword: str, item: Dataset | None = None, max_values: int | None = None) -> Any:
        """The value of ``keyword`` in ``item`` (default: the top level), None when absent or
        invalid."""
        source = self.ds if item is None else item
        if keyword not in source:
            return None
        try:  # the element itself may not be readable (corrupt length, bad VR)
            element = source[keyword]
            value = element.value
        except Exception:
            self._fail(keyword)
            return None
        vr = _vr(str(element.VR), keyword)
        if vr == "SQ":
            return value
        if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            return value  # bulk data (LUT data, offsets): checked by its reader
        if not value_is_valid(vr, value, max_values):
            self._fail(keyword)
            return None
        return value

    def text(self, keyword: str, item: Dataset | None = None) -> str:
        """A string value stripped of padding, "" when absent or invalid."""
        value = self.get(keyword, item)
        return "" if value is None else str(value).strip()

    def _fail(self, keyword: str) -> None:
        if keyword not in self.invalid:
            self.invalid.append(keyword)
            log.warning("invalid %s: the value breaks its VR's rules; treated as absent", keyword)
