"""The pipeline's steps, one file each, and `pipeline.build()`, the one ordered list of every step.

May import identity, policy and the base modules (never the edge, ops or the CLI).
"""
