"""What every omnipush service needs: settings, the store, the queue topology and runtime."""
