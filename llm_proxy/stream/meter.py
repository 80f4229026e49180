"""The stream meter: what mitmproxy calls with each chunk of a streamed response.

It must never cost the client anything: every chunk goes on as it arrives
(passthrough), a failure inside the meter only stops the metering, and bytes
are only ever held back when the proxy itself must remove an event (the usage
chunk of an `include_usage` the proxy injected). Then only the unfinished tail
of the current event waits, which no SSE client could have used yet anyway.
"""

from __future__ import annotations

import logging
import time

from ..usage import StreamParser, Usage
from .eventstream import EventStreamDecoder
from .framing import Event, JSONArrayDecoder, NDJSONDecoder, SSEDecoder

logger = logging.getLogger(__name__)

Decoder = SSEDecoder | NDJSONDecoder | JSONArrayDecoder | EventStreamDecoder


def decoder_for(content_type: str) -> Decoder:
    """Pick the framing from the response's content type."""
    content_type = content_type.lower()
    if "vnd.amazon.eventstream" in content_type:
        return EventStreamDecoder()
    if "ndjson" in content_type or "jsonl" in content_type:
        return NDJSONDecoder()
    if "json" in content_type:
        return JSONArrayDecoder()
    return SSEDecoder()


class StreamMeter:
    """Callable for `flow.response.stream`; meters a stream without disturbing it."""

    def __init__(self, parser: StreamParser, decoder: Decoder, *, strip: bool = False) -> None:
        self.parser = parser
        self.decoder = decoder
        self.strip = strip
        self.first_byte_at: float | None = None
        self.ended = False  # saw the end of the body (the final b"" call)
        self.meter_error: str | None = None  # set once the meter gave up on this stream

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if data and self.first_byte_at is None:
            self.first_byte_at = time.time()
        if self.meter_error is not None:
            if not data:
                self.finish()  # metering stopped, but the parser still closes what it saw
            return data
        try:
            events = self.decoder.feed(data) if data else self.decoder.flush()
        except Exception as e:  # never let a decoder bug cost the client a chunk
            logger.exception("stream meter failed; passing the rest through unmetered")
            return self._give_up(f"meter error: {e!r}", [], data)
        kept = self._dispatch(events)
        corrupt = self.decoder.corrupt
        if corrupt is not None:
            # A binary stream that fails its own checks: whatever it said before may be as wrong,
            # so its usage is unknown rather than partly counted.
            self.parser.usage = Usage()
            return self._give_up(corrupt, kept, data)
        if not data:
            self.finish()
        if self.decoder.overflowed:
            limit = self.decoder.max_event_bytes
            return self._give_up(f"an event grew past {limit} bytes; usage not metered", kept, data)
        if not self.strip:
            return data
        # A list, never b"": mitmproxy would frame an empty chunk as the end of the body.
        return [b"".join(kept)] if kept else []

    def _dispatch(self, events: list[Event]) -> list[bytes]:
        kept: list[bytes] = []
        for event in events:
            keep = True
            if event.data:
                try:
                    keep = self.parser.on_event(event.name, event.data)
                except Exception:
                    logger.exception("stream parser failed on one event; event passed on")
            if keep:
                kept.append(event.raw)
        return kept

    def _give_up(self, reason: str, kept: list[bytes], data: bytes) -> bytes | list[bytes]:
        logger.warning("stream meter stopped: %s", reason)
        self.meter_error = reason
        pending = self.decoder.take_pending()
        if not self.strip:
            return data
        out = b"".join(kept) + pending
        return [out] if out else []

    def finish(self) -> None:
        """Close the parser; safe to call more than once (response and error hooks)."""
        if self.ended:
            return
        self.ended = True
        try:
            self.parser.finish()
        except Exception:
            logger.exception("stream parser failed to finish")
