"""The leased worker: lease, tick, dispatch and the run loop."""
