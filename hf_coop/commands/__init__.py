"""The `hf-coop` subcommands: one module each, thin shells over the public API."""
