"""Virtual keys: the keys.toml model, its file, and the proxy's live reloading."""
