"""tcx: transcoders and sparse dictionaries on language-model MLPs.

Train one from the command line (see README.md)::

    tcx-train                                  # ReLU transcoder, MiniLM layer 3, Python docstrings
    tcx-train model=tiny experiment=smoke      # the same pipeline in seconds
"""

__version__ = "0.1.0"
