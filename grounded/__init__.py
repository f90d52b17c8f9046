"""grounded: text-grounded image work around a complete, fast Segment Anything Model.

`import grounded` loads only torch, numpy and pillow; every heavier library is imported by the
module that needs it.
"""

__version__ = "0.1.0"

# Packages whose nodes specs may name by short name: each registers its own
# (`grounded.pipeline.registry`) when the first name is looked up. Append your own package here.
NODE_PACKAGES = ["grounded.nodes"]
