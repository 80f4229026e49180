"""Where a call's price comes from: the operator's pricing.toml first, then genai-prices.

`database` adapts genai-prices (pydantic's maintained price database, shipped
as a data snapshot inside the package) to our provider names and normalised
token semantics; `sources` decides, per (provider, model), which of the two
prices a call; `rows` reads and reprices stored rows for the CLI.
"""
