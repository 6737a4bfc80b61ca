"""The pipeline behind the API: the outbox relay, the dispatcher and the channel workers."""
