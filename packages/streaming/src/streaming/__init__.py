"""streaming: not built yet; this is the package's skeleton (see its README)."""

__version__ = "0.0.1"
__all__: list[str] = []
