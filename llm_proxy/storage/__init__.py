"""Where rows go: the database URL, the schema, the sinks and the writer thread."""
