"""The HTTP edge: the FastAPI app, its dependencies, error policy, schemas and one router per resource."""
