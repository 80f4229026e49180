"""Rate limits, concurrency and budgets: decided locally, in memory, on the hot path."""
