"""Model serving: the vLLM server process manager and blue/green deployments."""
