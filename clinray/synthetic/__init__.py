"""The tiny clinical world: an invented knowledge base rendered into a corpus with planted ground truth.

See docs/tiny_world.md for the layout (the contract with every pipeline stage) and
:func:`generate_world` for the entry point.
"""

from clinray.synthetic.world import WorldConfig, generate_world

__all__ = ["WorldConfig", "generate_world"]
