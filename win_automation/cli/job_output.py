"""How a job command's output reaches the terminal: live as it arrives (`live`), and whole after
the run (`whole`, `print_json_streamed`), read back from the job's artifact files so memory stays
flat whatever the size."""

from __future__ import annotations

import codecs
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from win_automation.log import live_written

if TYPE_CHECKING:
    from win_automation.engines.outcome import JobOutcome


def write_to(stream: Any) -> Any:
    def sink(text: str) -> None:
        stream.write(text)
        stream.flush()

    return sink


def live(stream: str, text: str) -> None:
    """Live output, written to the stream's descriptor itself (its buffer flushed first): the
    engine writes it from a thread of its own (engines/live_output.py), which must hold no lock
    of sys.stdout's while a paused reader blocks it, so that Ctrl-C still ends the process."""
    target = sys.stdout if stream == "stdout" else sys.stderr
    live_written(stream, text)
    try:
        fd = target.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured): as any output
        write_to(target)(text)
        return
    target.flush()
    data = memoryview(text.encode(target.encoding, target.errors or "strict"))
    while data:
        data = data[os.write(fd, data) :]


def whole(outcome: JobOutcome, stream: str, preview: str, truncated: bool) -> Iterator[str]:
    """A stream's whole text, in pieces: read back from the job's artifact file when the step
    output kept only its tail (and the job ran on this host), so memory stays flat whatever the
    size; else what the step output holds, with a note when that is cut."""
    path = None if outcome.artifacts_dir is None else outcome.artifacts_dir / f"{stream}.txt"
    if not truncated or path is None or not path.is_file():
        if truncated:
            sys.stderr.write(
                f"note: {stream} shows its last {len(preview)} characters"
                f" (job {outcome.job_id} ran elsewhere)\n"
            )
        yield preview
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def print_json_streamed(fields: dict[str, Any]) -> None:
    """`print_json` for an object whose iterator values are long strings written piece by piece."""
    out = sys.stdout
    out.write("{\n")
    for index, (key, value) in enumerate(fields.items()):
        out.write(f"  {json.dumps(key)}: ")
        if isinstance(value, Iterator):
            out.write('"')
            for piece in value:
                out.write(json.dumps(piece)[1:-1])
            out.write('"')
        else:
            out.write(json.dumps(value))
        out.write(",\n" if index < len(fields) - 1 else "\n")
    out.write("}\n")
