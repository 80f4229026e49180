"""Limits shared by several proxies through Redis (llm_redis)."""
