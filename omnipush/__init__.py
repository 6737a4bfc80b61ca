"""The `omnipush` command: runs the services and answers operators' questions."""
