"""Rate limiting of ``/v1/*``: token buckets in one atomic Lua call on Redis."""
