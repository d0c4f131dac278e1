"""The engine's local HTTP API (FastAPI + uvicorn): jobs, uploads, results, region labelling."""
