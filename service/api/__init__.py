"""HTTP handlers: thin functions over the service's parts, one module per area."""
