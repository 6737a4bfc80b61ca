"""Channel adapters: one module per channel behind the `Channel` contract of `channels.base`."""
