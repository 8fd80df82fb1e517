"""Plain clients of the three services, for services that call each other (the trainer calls the
embedder and the hub gateway) and for the SDK in `clients/`, which re-exports them."""
