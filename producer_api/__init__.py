"""The producer API: the REST surface business systems send messages through."""
