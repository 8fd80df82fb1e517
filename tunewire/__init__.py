"""tunewire's shared library: the generated v1 contract, and the pieces every service imports
(server bootstrap, errors, logging, tensor codec, config schema)."""
