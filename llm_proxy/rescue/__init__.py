"""Keeping calls alive: retry policy, circuit breakers, and the relay that runs the attempts."""
