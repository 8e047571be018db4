"""attnlab: attention mechanisms as the classic texts describe them.

Layers (imports point down only): ``functional`` (readable reference math) ->
``kernels`` (fast paths, same contract) -> ``nn`` (modules) -> ``models``.
"""

__version__ = "0.1.0"
