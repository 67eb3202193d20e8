"""The attachment aggregate: pure commands → events → state, no I/O."""
