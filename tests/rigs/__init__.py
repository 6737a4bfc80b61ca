"""One rig per channel adapter or provider, for the shared harness (`tests/channel_harness.py`)."""
