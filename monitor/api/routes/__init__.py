"""One router per resource; :data:`tuneloop.monitor.api.app.ROUTERS` lists them all."""
