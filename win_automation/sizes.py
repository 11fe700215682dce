"""Byte sizes as users write them (`512MiB`, `1GiB`, `64KiB`, `10MB`, plain bytes) and back.

KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB powers of 1000 (as disks count); a unit's
case does not matter (`1gib`). A fraction is fine when it makes whole bytes (`1.5KiB` is 1536);
one that does not (`1.5`, `1.5B`, `1.0000000001KiB`, JSON's 1.5) is refused, never rounded, so
the file and the environment agree. `format_size` spells a size as errors show it: `1 GiB`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)?\s*$", re.ASCII | re.IGNORECASE)
MAX_BYTES = 1 << 50
"""The largest size accepted (1024 TiB): past any disk, and a number every API takes."""
_SHAPE = "must be a size such as 512MiB, 1GiB or plain bytes"
_WHOLE = "must be a whole number of bytes"


def parse_size(value: object) -> int:
    """Bytes from `value`; raises ValueError with the reason when it is not a size."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, float) and math.isfinite(value):  # JSON's 1e9
        if not value.is_integer():
            raise ValueError(f"{_WHOLE}, got {_shown(value)}")
        size = int(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        unit = _UNITS.get((match.group(2) or "b").lower())
        if unit is None:
            raise ValueError(f"{_SHAPE} (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), got {_shown(value)}")
        with localcontext() as context:
            context.prec = len(match.group(1)) + 20  # every digit kept: exact (the default rounds at 28)
            exact = Decimal(match.group(1)) * unit
            if exact != exact.to_integral_value():
                raise ValueError(f"{_WHOLE}, got {_shown(value)}")
        size = int(exact)
    else:
        raise ValueError(f"{_SHAPE}, got {_shown(value)}")
    if size <= 0:
        raise ValueError(f"must be more than zero bytes, got {_shown(value)}")
    if size > MAX_BYTES:
        raise ValueError(f"must be at most 1024TiB, got {_shown(value)}")
    return size


def format_size(size: int) -> str:
    """The largest binary unit that spells `size` exactly: 1073741824 -> '1 GiB'; else bytes."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} byte" if size == 1 else f"{size} bytes"


def _shown(value: object) -> str:
    """`value` for an error message: a huge one is cut, so the message stays one short line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
