"""The HTTP face: health, readiness, metrics, the JSON API and the console, in the daemon's
process (`server.serve`)."""
