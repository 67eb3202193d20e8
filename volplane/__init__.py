"""volplane's shared core: events and codec, event store, bus, projections, config.

Services import from here; nothing here imports a service.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
