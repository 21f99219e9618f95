"""tuneloop.monitor — the service: config, store, collector API, auth, SDK, drift, alerts, scheduler, serving, CLI."""
