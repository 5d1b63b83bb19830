"""``agentbus bench``: measured figures of the configured backend, beside their comparisons.

Measures and reports; never asserts. Nothing here is imported by the service itself.
"""
