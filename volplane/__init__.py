"""volplane's shared core: events and codec, event store, bus, projections, config.

Services import from here; nothing here imports a service.

    import volplane; volplane.__version__      # "0.1.0"
"""

# The one place the version is written: pyproject.toml reads it (dynamic version), the
# wheel's metadata carries it, `volctl version` and `volplane version` print it.
__version__ = "0.1.0"
__all__ = ["__version__"]
