"""Async calls (`Prefer: respond-async`), their durable queue in `llm_jobs`, signed webhooks and budget alerts."""
