"""Suite-wide setup.

hypothesis is imported here, at collection, on purpose: its pytest plugin otherwise imports it
lazily at session end, deep in the stack, where CPython 3.11.7's ``ast.parse`` fails with
"AST constructor recursion depth mismatch" (fixed in 3.11.8).
"""

import hypothesis  # noqa: F401
