"""fusionrec: a Hugging Face-native movie recommender (two-tower model, content + rating sequences).

The library behind the top-level scripts; the model itself is the standalone `modeling_fusionrec.py` and
`configuration_fusionrec.py` (Hub remote code). Layout, in data-flow order: README.md, "Layout".
"""

__version__ = "0.1.0"
