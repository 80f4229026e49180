"""llm-proxy: a mitmproxy addon that meters, guards and rescues LLM API calls."""
