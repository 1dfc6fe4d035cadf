"""Prices: the catalogue, its refresh from public sources, constraints, estimates and cost so far.

Nothing here is imported by the agent; the spec imports only `constraints.is_query` eagerly.
"""
