"""The Resource Provider Substrate: real backends that primitives act through."""
