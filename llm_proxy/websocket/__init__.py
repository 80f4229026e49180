"""The Responses API over WebSocket: each response.create on a socket is one metered call."""
