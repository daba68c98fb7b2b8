"""fmlite-platform: shared contract pieces (sharding hash, artifact formats) and the CLI.

Tier packages: ``rpc`` (how bytes move), ``controller`` (L0 router and L1 shard controller),
``leaf`` (leaf predictor), ``model`` (offline pipeline). Modules in this package import no tier
at module level, so every tier may import them.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
