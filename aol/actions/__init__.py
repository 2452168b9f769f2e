"""Action handlers: the registry, the handler context, proof artifacts, built-in adapters."""
