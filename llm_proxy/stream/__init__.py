"""Streamed responses: framing (SSE, NDJSON, JSON array) and the stream meter."""
