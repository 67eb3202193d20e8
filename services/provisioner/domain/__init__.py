"""The volume aggregate: pure commands → events → state, no I/O."""
