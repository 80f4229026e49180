"""Which provider calls become rows: model calls only, unless `llm_record=all`."""
