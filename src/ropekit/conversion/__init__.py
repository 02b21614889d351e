"""Checkpoint conversion: plan -> stream -> atomic install -> verify, with ``formats/`` per format.

The public entry point is the function :func:`ropekit.convert` (this package is not called
``convert``: a submodule of that name would shadow the function on the ``ropekit`` package).
"""
