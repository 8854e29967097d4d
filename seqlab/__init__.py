"""seqlab: correct, tested, fast implementations of experimental sequence-model architectures.

Layers of the package (imports only point left):
    ops -> layers -> models -> tasks / train -> cli;  data and errors depend on nothing.
"""

__version__ = "0.1.0"
