"""What applications use beyond enqueueing: request building shared by the sync, async and bulk
entry points, waiting for settles, settlement hooks and the HTTP API for other languages."""
